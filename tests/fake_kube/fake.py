"""FakeKube: an HTTP-level fake of the Kubernetes API on 127.0.0.1 that the real `kubernetes` client talks to.

It serves namespaced CRUD of batch/v1 jobs, apps/v1 deployments, autoscaling/v2
horizontalpodautoscalers, v1 services, pods and events (label and field selectors, set-based
included), `?watch=true` streams from a resourceVersion (410 once compacted), pod logs (tailLines,
follow), the services proxy subresource (forwarded to a backend a test registers), and DELETE with
propagation through ownerReferences.

A test plays the cluster's controllers and kubelet through its hooks (run a Job's pod, complete or
fail the Job, put a pod in ImagePullBackOff or Unschedulable, mark a Deployment available), injects
faults (a status or a connection reset for the next N calls of a verb on a resource; a dropped,
ended or held watch), and reads `calls`, every (verb, resource) it was asked for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from app.core.manifests import LABEL_REVISION
from tests.fake_kube import pods as pod_status
from tests.fake_kube.server import FakeHttpServer, Route
from tests.fake_kube.store import ObjectStore


@dataclass(frozen=True)
class Call:
    verb: str
    api_group: str
    resource: str
    name: str | None


@dataclass
class Fault:
    verb: str
    resource: str
    times: int
    status: int = 500
    reason: str = "InternalError"
    message: str = "injected fault"
    retry_after: int | None = None
    reset: bool = False


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA both sides trust, the server's pair, and a client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists", 410: "Expired",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def _with_containers(status: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A pod status whose container statuses name the spec's containers and images."""
    status = copy.deepcopy(status)
    containers = spec["containers"]
    for index, container_status in enumerate(status.get("containerStatuses") or []):
        container = containers[min(index, len(containers) - 1)]
        container_status.setdefault("name", container["name"])
        container_status.setdefault("image", container["image"])
    return status


def _template_hash(template: dict[str, Any]) -> str:
    """What the Deployment controller's pod-template-hash does: one value per pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class FakeKube:
    def __init__(self, namespace: str = "mlops-test", token: str | None = None, tls: TlsFiles | None = None):
        self.namespace = namespace
        self.token = token
        self.tls = tls
        self.store = ObjectStore()
        self.calls: list[Call] = []
        # (resource, name, propagationPolicy) of every DELETE served.
        self.deletions: list[tuple[str, str | None, str | None]] = []
        self.backends: dict[tuple[str, str], tuple[str, int]] = {}
        self.closing = False
        self.watch_drops = 0
        self.watch_ends = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._watch_gate = threading.Event()
        self._watch_gate.set()
        self._server = FakeHttpServer(self)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            context.load_verify_locations(tls.ca)
            context.verify_mode = ssl.CERT_REQUIRED  # a client certificate is the credential
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self.store.cond:
            self.closing = True
            self.store.cond.notify_all()
        self._watch_gate.set()
        self._server.shutdown()
        self._server.close_all_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def configuration(self) -> client.Configuration:
        """What a kubeconfig for this fake would load into the official client."""
        configuration = client.Configuration()
        configuration.host = self.url
        if self.token is not None:
            configuration.api_key = {"BearerToken": f"Bearer {self.token}"}
        if self.tls is not None:
            configuration.ssl_ca_cert = str(self.tls.ca)
            configuration.cert_file = str(self.tls.client_cert)
            configuration.key_file = str(self.tls.client_key)
        return configuration

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(self.configuration())

    # -- what the server calls ---------------------------------------------------------------------

    def record(self, route: Route) -> None:
        with self._lock:
            self.calls.append(Call(route.verb, route.api_group, route.resource, route.name))

    def take_fault(self, verb: str, resource: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.verb == verb and fault.resource == resource and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def wait_while_watches_held(self) -> None:
        while not self._watch_gate.wait(0.1):
            if self.closing:
                return

    # -- faults -------------------------------------------------------------------------------------

    def fail_next(
        self, verb: str, resource: str, status: int, times: int = 1, message: str = "injected fault",
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` calls of `verb` on `resource` (e.g. "pods/log") with `status`."""
        reason = _REASONS.get(status, "Failure")
        with self._lock:
            self._faults.append(Fault(verb, resource, times, status, reason, message, retry_after))

    def reset_next(self, verb: str, resource: str, times: int = 1) -> None:
        """Cut the connection of the next `times` calls without an answer (a connection reset)."""
        with self._lock:
            self._faults.append(Fault(verb, resource, times, reset=True))

    def drop_watches(self) -> None:
        """Break every open watch stream mid-way (no final chunk); what happens meanwhile is not sent."""
        with self.store.cond:
            self.watch_drops += 1
            self.store.cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as the server's timeout does."""
        with self.store.cond:
            self.watch_ends += 1
            self.store.cond.notify_all()

    def hold_watches(self) -> None:
        """New watch requests wait (unanswered) until release_watches()."""
        self._watch_gate.clear()

    def release_watches(self) -> None:
        self._watch_gate.set()

    def compact(self) -> None:
        self.store.compact()

    # -- the recorder -------------------------------------------------------------------------------

    def calls_since(self, mark: int) -> list[Call]:
        with self._lock:
            return self.calls[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    # -- reading and writing objects directly (as kubectl or a controller would) ---------------------

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.store.get(resource, self.namespace, name)

    def list(self, resource: str, labels: str | None = None) -> list[dict[str, Any]]:
        return self.store.list(resource, self.namespace, labels)[0]

    def names(self, resource: str) -> list[str]:
        with self.store.cond:
            return sorted(name for (kind, namespace, name) in self.store.objects
                          if kind == resource and namespace == self.namespace)

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(resource, self.namespace, body)

    def delete(self, resource: str, name: str, propagation: str = "Background") -> None:
        self.store.delete(resource, self.namespace, name, propagation)

    def update(self, resource: str, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        return self.store.update(resource, self.namespace, name, change)

    # -- the cluster's controllers and kubelet, driven by the test -----------------------------------

    def add_pod(self, owner_resource: str, owner_name: str, status: dict[str, Any]) -> str:
        """A pod of a Job or Deployment, from its template, in `status` (see tests/fake_kube/pods.py)."""
        owner = self.get(owner_resource, owner_name)
        assert owner is not None, f"no {owner_resource} {owner_name}"
        template = owner["spec"]["template"]
        labels = dict(template["metadata"].get("labels") or {})
        suffix = secrets.token_hex(3)[:5]
        if owner_resource == "jobs":
            name = f"{owner_name}-{suffix}"
            labels |= {"job-name": owner_name, "batch.kubernetes.io/job-name": owner_name,
                       "controller-uid": owner["metadata"]["uid"]}
        else:  # the ReplicaSet between a Deployment and its pods is left out; its hash names the template
            template_hash = _template_hash(template)
            name = f"{owner_name}-{template_hash}-{suffix}"
            labels["pod-template-hash"] = template_hash
        reference = {"apiVersion": owner.get("apiVersion", ""), "kind": owner.get("kind", ""), "name": owner_name,
                     "uid": owner["metadata"]["uid"], "controller": True}
        spec = copy.deepcopy(template["spec"])
        # Made with its status in one step, so that watchers never see a pod without one.
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": labels, "ownerReferences": [reference]},
                "spec": spec, "status": _with_containers(status, spec)}
        self.create("pods", body)
        return name

    def set_pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.update("pods", name, lambda pod: pod.update(status=_with_containers(status, pod["spec"])))

    def pods_of(self, owner_name: str) -> list[str]:
        # Read in place, not copied: the scale benchmark's controller asks this of a thousand Jobs.
        with self.store.cond:
            return sorted(
                name for (resource, namespace, name), pod in self.store.objects.items()
                if resource == "pods" and namespace == self.namespace
                and any(ref.get("name") == owner_name for ref in pod["metadata"].get("ownerReferences") or [])
            )

    def write_log(self, pod: str, text: str | bytes) -> None:
        self.store.append_log(self.namespace, pod, text.encode() if isinstance(text, str) else text)

    def start_job(self, name: str) -> str:
        """The Job controller makes a pod and the kubelet runs it: the Job is active."""
        pod = self.add_pod("jobs", name, pod_status.running())
        now = self.store.now()
        self.update("jobs", name, lambda job: job["status"].update(active=1, ready=1, startTime=now))
        return pod

    def complete_job(self, name: str) -> None:
        for pod in self.pods_of(name):
            self.set_pod_status(pod, pod_status.terminated(0, "Completed"))
        now = self.store.now()
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
        ]
        self.update("jobs", name, lambda job: job["status"].update(
            active=0, ready=0, succeeded=1, completionTime=now, conditions=conditions))

    def fail_job(
        self, name: str, reason: str = "BackoffLimitExceeded", message: str = "Job has reached the specified backoff "
        "limit", exit_code: int = 1, termination_message: str = "", container_reason: str = "Error",
    ) -> None:
        """The trainer's container ends (with its termination message) and the Job controller fails the Job."""
        for pod in self.pods_of(name):
            self.set_pod_status(pod, pod_status.terminated(exit_code, container_reason, termination_message))
        now = self.store.now()
        conditions = [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
             "lastTransitionTime": now},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now},
        ]
        self.update("jobs", name, lambda job: job["status"].update(active=0, ready=0, failed=1, conditions=conditions))

    def make_deployment_available(self, name: str) -> None:
        """Its pod runs and is ready; the Deployment controller counts it available."""
        if not self.pods_of(name):
            self.add_pod("deployments", name, pod_status.running(ready=True))
        now = self.store.now()
        deployment = self.get("deployments", name)
        assert deployment is not None, f"no deployment {name}"
        status = {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "lastTransitionTime": now},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "lastTransitionTime": now},
            ],
        }
        self.update("deployments", name, lambda deployment: deployment.update(status=status))

    # -- a rolling update, step by step: the test plays the Deployment controller and the kubelet ------

    def pods_of_revision(self, name: str, revision: int) -> list[str]:
        """The Deployment's pods labelled with `revision` (app/core/manifests.py LABEL_REVISION)."""
        return [
            pod["metadata"]["name"]
            for pod in self.list("pods")
            if pod["metadata"]["name"] in self.pods_of(name)
            and (pod["metadata"].get("labels") or {}).get(LABEL_REVISION) == str(revision)
        ]

    def add_revision_pod(self, name: str, status: dict[str, Any] | None = None) -> str:
        """The controller's surge pod of the Deployment's current template (its newest revision);
        by default it runs, not ready yet (its model is loading)."""
        pod = self.add_pod("deployments", name, status or pod_status.running(ready=False))
        self.sync_deployment(name)
        return pod

    def retire_old_pods(self, name: str) -> list[str]:
        """The controller scales the old ReplicaSets down: pods of an older template go."""
        deployment = self.get("deployments", name)
        assert deployment is not None, f"no deployment {name}"
        current = _template_hash(deployment["spec"]["template"])
        old = [pod["metadata"]["name"] for pod in self.list("pods")
               if pod["metadata"]["name"] in self.pods_of(name)
               and pod["metadata"]["labels"].get("pod-template-hash") != current]
        for pod in old:
            self.delete("pods", pod)
        self.sync_deployment(name)
        return old

    def roll_out(self, name: str) -> list[str]:
        """The whole rolling update done well: `spec.replicas` ready pods of the current template
        (the ones there, then new ones), old pods gone, the status complete. Returns the new pods."""
        deployment = self.get("deployments", name)
        assert deployment is not None, f"no deployment {name}"
        current = _template_hash(deployment["spec"]["template"])
        mine = [pod for pod in self.list("pods") if pod["metadata"]["name"] in self.pods_of(name)
                and pod["metadata"]["labels"].get("pod-template-hash") == current]
        names = [pod["metadata"]["name"] for pod in mine]
        for pod in mine:
            self.set_pod_status(pod["metadata"]["name"], pod_status.running(ready=True))
        while len(names) < deployment["spec"].get("replicas", 1):
            names.append(self.add_pod("deployments", name, pod_status.running(ready=True)))
        for extra in names[deployment["spec"].get("replicas", 1):]:
            self.delete("pods", extra)
        self.retire_old_pods(name)
        return names[: deployment["spec"].get("replicas", 1)]

    def sync_deployment(self, name: str) -> dict[str, Any]:
        """The Deployment controller's status from the pods there now: replicas, updated (of the
        current template), ready, available (minReadySeconds taken as passed), and its conditions."""
        deployment = self.get("deployments", name)
        assert deployment is not None, f"no deployment {name}"
        current = _template_hash(deployment["spec"]["template"])
        pods = [pod for pod in self.list("pods") if pod["metadata"]["name"] in self.pods_of(name)]
        ready = sum(1 for pod in pods if _ready(pod))
        updated = sum(1 for pod in pods if pod["metadata"]["labels"].get("pod-template-hash") == current)
        wanted = deployment["spec"].get("replicas", 1)
        now = self.store.now()
        complete = updated == len(pods) == wanted and ready == wanted
        status = {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": len(pods),
            "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
            "unavailableReplicas": max(0, wanted - ready),
            "conditions": [
                {"type": "Available", "status": "True" if ready >= wanted else "False",
                 "reason": "MinimumReplicasAvailable" if ready >= wanted else "MinimumReplicasUnavailable",
                 "lastTransitionTime": now},
                {"type": "Progressing", "status": "True",
                 "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated", "lastTransitionTime": now},
            ],
        }
        for key in [key for key, value in status.items() if value == 0]:
            del status[key]  # as the API server omits zero counts
        return self.update("deployments", name, lambda obj: obj.update(status=status))

    def set_deployment_conditions(self, name: str, *conditions: dict[str, Any]) -> None:
        self.update("deployments", name, lambda deployment: deployment["status"].update(
            conditions=list(conditions), replicas=1, unavailableReplicas=1))

    def add_event(self, involved: dict[str, Any], reason: str, message: str, event_type: str = "Warning") -> None:
        """An event about `involved` (a pod or a Job), as the scheduler or a controller records it."""
        metadata = involved["metadata"]
        now = self.store.now()
        self.create("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{metadata['name']}.{secrets.token_hex(8)}"},
            "involvedObject": {"kind": involved.get("kind", ""), "name": metadata["name"], "uid": metadata["uid"],
                               "namespace": self.namespace},
            "reason": reason, "message": message, "type": event_type, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
        })

    def set_backend(self, service: str, host: str, port: int) -> None:
        """Where the services proxy forwards requests for `service` (what its endpoints would be)."""
        self.backends[(self.namespace, service)] = (host, port)
