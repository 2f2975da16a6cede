"""KubernetesRuntime: the manifests become real Jobs, Deployments and Services, and the cluster is the database.

Every object carries the task's labels and its request annotation, so get and list read each task
back from the cluster alone: a restarted API, or a second replica, sees every task. The blocking
methods run in worker threads (app/core/blocking.py); start() and close() run the endpoint watch.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from kubernetes import client

from app.core.manifests import (
    KIND_INFERENCE,
    KIND_TRAINING,
    LABEL_MANAGED_BY,
    LABEL_TASK_ID,
    LABEL_TASK_KIND,
    MANAGED_BY,
    request_of,
    rollout_of,
    task_selector,
)
from app.core.names import job_name
from app.errors import MlopsError, TaskConflict, TaskNotFound
from app.runtime.base import AlreadyExists, EndpointCache, WorkloadState
from app.runtime.kubernetes.api import (
    DEPLOYMENTS,
    EVENTS,
    JOBS,
    PODS,
    RESOURCE_OF_KIND,
    SERVICES,
    ClusterApi,
    ObjectChanged,
    ObjectExists,
    ObjectGone,
    Resource,
    RetryPolicy,
)
from app.runtime.kubernetes.connection import connect, predict_route
from app.runtime.kubernetes.endpoint_watch import WATCHED, EndpointWatch
from app.runtime.kubernetes.logs import LogFollower, read_task_log
from app.runtime.kubernetes.routes import ApiServerProxyRoute, ServiceRoute
from app.runtime.kubernetes.status import (
    Phase,
    inference_phase,
    job_times,
    newest,
    parse_time,
    revision_status,
    rollout_complete,
    training_phase,
)
from app.schemas.inference import DeploymentStatus
from app.schemas.training import TrainingStatus
from app.settings import Settings

log = logging.getLogger(__name__)

_PENDING = {TrainingStatus.PENDING, DeploymentStatus.PENDING}
# Done well: their pods have nothing more to tell.
_SETTLED = {TrainingStatus.SUCCEEDED, DeploymentStatus.READY}
PhaseOf = Callable[[dict[str, Any], Sequence[dict[str, Any]], Sequence[dict[str, Any]]], Phase]
# Named here because inside the class `list` is the Runtime method.
Objects = list[dict[str, Any]]
Made = list[tuple[Resource, dict[str, Any]]]
PodsByTask = dict[str, Objects]
States = list[WorkloadState]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _belongs(obj: dict[str, Any], kind: str, task_id: str | None = None) -> bool:
    """Made by this API for a task of `kind` (and that task id, if given)."""
    labels = _labels(obj)
    return (
        labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        and labels.get(LABEL_TASK_KIND) == kind
        and (task_id is None or labels.get(LABEL_TASK_ID) == task_id)
    )


def _owned_by(manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """The manifest with `owner` as its owner: the cluster's garbage collector then removes it with the owner."""
    reference = {
        "apiVersion": owner.get("apiVersion", "apps/v1"),
        "kind": owner.get("kind", "Deployment"),
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    return {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [reference]}}


def _replacing(manifest: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """`manifest` as a PUT over `live`: only over the version read (`resourceVersion`, else 409) and
    that incarnation (`uid`); what others keep in the metadata (the garbage collector's owner, a
    finalizer, the Deployment controller's revision annotation, a label someone added) stays."""
    metadata, current = manifest["metadata"], live["metadata"]
    kept = {key: current[key] for key in ("uid", "resourceVersion", "ownerReferences", "finalizers") if key in current}
    return {
        **manifest,
        "metadata": {
            **metadata,
            **kept,
            "labels": {**(current.get("labels") or {}), **(metadata.get("labels") or {})},
            "annotations": {**(current.get("annotations") or {}), **(metadata.get("annotations") or {})},
        },
    }


def _covers(live: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether `live` already has everything `manifest` sets in its labels, annotations and spec."""
    for part in ("labels", "annotations"):
        if not (manifest["metadata"].get(part) or {}).items() <= (live["metadata"].get(part) or {}).items():
            return False
    live_spec = live.get("spec") or {}
    return all(live_spec.get(key) == value for key, value in (manifest.get("spec") or {}).items())


class KubernetesRuntime:
    allows_local_paths = False

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        route: ServiceRoute | None = None,
        retry: RetryPolicy = RetryPolicy(),
        request_timeout_seconds: float = 10.0,
        watch_timeout_seconds: int = 240,
        watch_retry_delay_seconds: float = 1.0,
        endpoint_refresh_seconds: float = 5.0,
        log_wait_seconds: int = 30,
        sync_timeout_seconds: float = 10.0,
    ):
        self.namespace = namespace
        self.api = ClusterApi(api_client, namespace, retry, request_timeout_seconds)
        self.route = route or ApiServerProxyRoute(api_client.configuration, namespace)
        self.endpoints = EndpointCache()
        self.endpoint_refresh_seconds = endpoint_refresh_seconds
        self.log_wait_seconds = log_wait_seconds
        self.sync_timeout_seconds = sync_timeout_seconds
        self._watch = EndpointWatch(
            self.api, self.route, self.endpoints, watch_timeout_seconds, watch_retry_delay_seconds
        )
        self._refresh_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "KubernetesRuntime":
        connection = connect(settings)
        return cls(
            connection.api_client,
            connection.namespace,
            route=predict_route(settings.predict_route, connection),
            request_timeout_seconds=settings.kube_request_timeout_seconds,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._watch.start(asyncio.get_running_loop())
        # Serve predicts from the first request if the cluster answers; never hang start-up if not.
        if not await asyncio.to_thread(self._watch.wait_synced, self.sync_timeout_seconds):
            log.warning("the endpoint watch has not listed the cluster yet; predicts answer 404 until it does")
        self._refresh_task = asyncio.create_task(self._restore_endpoints_forever())

    def unready_reason(self) -> str | None:
        return self._watch.unreachable_reason()

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        await asyncio.to_thread(self._watch.stop)

    async def _restore_endpoints_forever(self) -> None:
        while True:
            await asyncio.sleep(self.endpoint_refresh_seconds)
            self._watch.restore_marked_unready()

    # -- the Runtime contract ------------------------------------------------------------------------

    def create(self, kind: str, task_id: str, manifests: Objects) -> WorkloadState:
        made: Made = []
        try:
            for manifest in manifests:
                made.append(self._create_one(kind, task_id, manifest, made))
        except BaseException:
            self._remove(made)  # nothing half-made: a Deployment without its Service goes again
            raise
        for resource, obj in made:
            if resource in WATCHED:
                self._watch.observe(resource, obj)
        first = made[0][1]
        return self._states(kind, [first], pods={}, events=[])[0]

    def _create_one(
        self, kind: str, task_id: str, manifest: dict[str, Any], made: Made
    ) -> tuple[Resource, dict[str, Any]]:
        resource = RESOURCE_OF_KIND[manifest["kind"]]
        name = manifest["metadata"]["name"]
        # The Service is owned by its Deployment, so the cluster removes it with the Deployment whoever deletes that.
        owner = next((obj for r, obj in made if r is DEPLOYMENTS), None)
        body = _owned_by(manifest, owner) if owner is not None and resource is SERVICES else manifest
        try:
            return resource, self.api.create(resource, body)
        except ObjectExists:
            pass
        if not made:
            state = self.get(kind, task_id)
            if state is not None:
                raise AlreadyExists(state) from None
        existing = self.api.get(resource, name)
        if made and existing is not None and _belongs(existing, kind, task_id):
            return resource, existing  # made by an earlier try of this same create (its answer was lost)
        holder = _labels(existing or {}).get(LABEL_TASK_ID)
        whose = f"belongs to task '{holder}'" if holder else "was not made by this API"
        raise TaskConflict(
            f"a {manifest['kind']} named '{name}' already exists in namespace '{self.namespace}' and {whose}",
            field="modelId" if kind == KIND_INFERENCE else "taskId",
        )

    def update(self, kind: str, task_id: str, manifests: Objects, current: WorkloadState) -> WorkloadState:
        """Replace the Deployment (its pod template: a new revision; its replicas); the cluster rolls
        it out with the strategy the manifest carries (a new pod ready before an old one stops)."""
        by_kind = {manifest["kind"]: manifest for manifest in manifests}
        wanted = by_kind["Deployment"]
        name = wanted["metadata"]["name"]
        live = self.api.get(DEPLOYMENTS, name)
        if live is None or not _belongs(live, kind, task_id):
            raise TaskNotFound(f"no deployment '{task_id}': its Deployment '{name}' is gone", field="taskId")
        # Changed since `current` was read: re-created, its spec (generation) or its revisions.
        # The controller's status updates do not count: they change nothing an update decides on.
        metadata = live["metadata"]
        if (
            metadata.get("uid") != current.uid
            or metadata.get("generation") != current.extra.get("generation")
            or rollout_of(live) != current.rollout
        ):
            raise self._changed_meanwhile(task_id, name)
        try:
            replaced = self.api.replace(DEPLOYMENTS, _replacing(wanted, live))
        except ObjectGone:
            raise TaskNotFound(f"no deployment '{task_id}': its Deployment '{name}' is gone", field="taskId") from None
        except ObjectChanged:
            raise self._changed_meanwhile(task_id, name) from None
        self._watch.observe(DEPLOYMENTS, replaced)
        if "Service" in by_kind:
            self._update_service(by_kind["Service"])
        return self._states(kind, [replaced], task_id=task_id)[0]

    def _changed_meanwhile(self, task_id: str, name: str) -> TaskConflict:
        return TaskConflict(
            f"deployment '{task_id}' changed meanwhile (Deployment '{name}' in namespace '{self.namespace}' was "
            f"updated by someone else); read it again and retry",
            field="taskId",
        )

    def _update_service(self, wanted: dict[str, Any]) -> None:
        """The Service records the request too: replaced only if it lacks what `wanted` sets. Its
        cluster IP and the rest the cluster filled in stay (spec keys the manifest does not set)."""
        live = self.api.get(SERVICES, wanted["metadata"]["name"])
        if live is None or _covers(live, wanted):
            return
        body = _replacing(wanted, live)
        body["spec"] = {**(live.get("spec") or {}), **(wanted.get("spec") or {})}
        try:
            replaced = self.api.replace(SERVICES, body)
        except (ObjectGone, ObjectChanged) as exc:
            # The Deployment (the new revision) is in: a Service changed or gone meanwhile is left to its owner.
            log.warning("the Service %s was not updated: %s", wanted["metadata"]["name"], exc)
            return
        self._watch.observe(SERVICES, replaced)

    def _remove(self, made: Made) -> None:
        for resource, obj in reversed(made):
            try:
                self.api.delete(resource, obj["metadata"]["name"], obj["metadata"].get("uid"))
            except MlopsError as exc:
                log.error("could not remove %s %s after a failed create: %s", resource, obj["metadata"]["name"], exc)

    def get(self, kind: str, task_id: str) -> WorkloadState | None:
        if kind == KIND_TRAINING:
            job = self.api.get(JOBS, job_name(task_id))
            objects = [job] if job is not None and _belongs(job, kind, task_id) else []
        else:
            deployments, _ = self.api.list(DEPLOYMENTS, task_selector(kind, task_id))
            objects = [deployment] if (deployment := newest(deployments)) is not None else []
        states = self._states(kind, objects, task_id=task_id)
        return states[0] if states else None

    def list(self, kind: str) -> States:
        objects, _ = self.api.list(self._workload_resource(kind), task_selector(kind))
        # One object per task; were there several (someone copied one), the newest speaks for it.
        by_task: PodsByTask = defaultdict(list)
        for obj in objects:
            if _belongs(obj, kind):
                by_task[_labels(obj)[LABEL_TASK_ID]].append(obj)
        chosen = [newest(group) for _, group in sorted(by_task.items())]
        return self._states(kind, [obj for obj in chosen if obj is not None])

    def delete(self, kind: str, task_id: str) -> bool:
        if kind == KIND_TRAINING:
            job = self.api.get(JOBS, job_name(task_id))
            if job is None or not _belongs(job, kind, task_id):
                return False
            return self.api.delete(JOBS, job["metadata"]["name"], job["metadata"]["uid"])
        selector = task_selector(kind, task_id)
        services, _ = self.api.list(SERVICES, selector)
        deployments, _ = self.api.list(DEPLOYMENTS, selector)
        deleted = False
        # The Service first: predicts stop being routed before the pods go.
        for resource, obj in [*((SERVICES, s) for s in services), *((DEPLOYMENTS, d) for d in deployments)]:
            deleted = self.api.delete(resource, obj["metadata"]["name"], obj["metadata"]["uid"]) or deleted
        self._watch.forget(task_id)
        return deleted

    def read_logs(self, kind: str, task_id: str, tail: int | None) -> str:
        return read_task_log(self.api, task_selector(kind, task_id), tail, lambda: self.get(kind, task_id))

    async def follow_logs(self, kind: str, task_id: str, tail: int | None) -> AsyncIterator[bytes]:
        follower = LogFollower(
            self.api, task_selector(kind, task_id), tail, lambda: self.get(kind, task_id), self.log_wait_seconds
        )
        chunks = follower.chunks()
        try:
            while True:
                # The client blocks on the stream: each read happens in a worker thread.
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            follower.cancel()  # the reader went away: unblock and end the worker's read

    # -- state ---------------------------------------------------------------------------------------

    @staticmethod
    def _workload_resource(kind: str) -> Resource:
        return JOBS if kind == KIND_TRAINING else DEPLOYMENTS

    def _states(
        self,
        kind: str,
        objects: Objects,
        task_id: str | None = None,
        pods: PodsByTask | None = None,
        events: Objects | None = None,
    ) -> States:
        """States of `objects` (Jobs or Deployments), with pods and events read only when they can tell more."""
        phase_of: PhaseOf = training_phase if kind == KIND_TRAINING else inference_phase
        phases = {id(obj): phase_of(obj, [], []) for obj in objects}
        # Which revision serves is told by the pods while a rollout goes on.
        rolling = kind == KIND_INFERENCE and not all(rollout_complete(obj) for obj in objects)
        if pods is None and (rolling or any(phase not in _SETTLED for phase, _ in phases.values())):
            pods = self._pods_by_task(kind, task_id)
        listed = pods is not None
        pods = pods or {}
        phases = {id(obj): phase_of(obj, pods.get(_labels(obj)[LABEL_TASK_ID], []), []) for obj in objects}
        if events is None and any(phase in _PENDING for phase, _ in phases.values()):
            # Why a pod is not there or not scheduled (FailedCreate, FailedScheduling): Warning events.
            events, _ = self.api.list(EVENTS, fields="type=Warning")
            phases = {
                id(obj): phase_of(obj, pods.get(_labels(obj)[LABEL_TASK_ID], []), events) for obj in objects
            }
        states = [self._state(kind, obj, *phases[id(obj)]) for obj in objects]
        if kind == KIND_INFERENCE:
            for state, obj in zip(states, objects, strict=True):
                task_pods = pods.get(state.task_id, []) if listed else None
                state.serving_revision, state.revision_problem = revision_status(obj, task_pods)
        return states

    def _pods_by_task(self, kind: str, task_id: str | None) -> PodsByTask:
        pods, _ = self.api.list(PODS, task_selector(kind, task_id))
        by_task: PodsByTask = defaultdict(list)
        for pod in pods:
            by_task[_labels(pod).get(LABEL_TASK_ID, "")].append(pod)
        return by_task

    def _state(self, kind: str, obj: dict[str, Any], phase: str, message: str | None) -> WorkloadState:
        metadata = obj["metadata"]
        start_time, completion_time = job_times(obj) if kind == KIND_TRAINING else (None, None)
        return WorkloadState(
            kind=kind,
            task_id=_labels(obj)[LABEL_TASK_ID],
            request=request_of(obj),
            phase=phase,
            message=message,
            created_at=parse_time(metadata.get("creationTimestamp")),
            start_time=start_time,
            completion_time=completion_time,
            uid=metadata.get("uid", ""),
            ready_replicas=(obj.get("status") or {}).get("readyReplicas", 0) if kind == KIND_INFERENCE else None,
            rollout=rollout_of(obj) if kind == KIND_INFERENCE else None,
            # What update() checks to tell a change made meanwhile.
            extra={"namespace": self.namespace, "name": metadata["name"], "generation": metadata.get("generation")},
        )
