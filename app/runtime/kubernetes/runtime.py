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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

from app.core.manifests import (
    KIND_CANARY,
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
from app.core.manifests import revision_of as template_revision_of
from app.core.names import job_name
from app.errors import MlopsError, TaskConflict, TaskNotFound
from app.runtime.base import AlreadyExists, EndpointCache, WorkloadState
from app.runtime.kubernetes.api import (
    DEPLOYMENTS,
    EVENTS,
    HPAS,
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
from app.runtime.kubernetes.endpoint_watch import INFERENCE_SELECTOR, EndpointWatch
from app.runtime.kubernetes.logs import LogFollower, read_task_log
from app.runtime.kubernetes.object_cache import ObjectCache, Watched
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
# Why a pod is not there or not scheduled (FailedCreate, FailedScheduling): Warning events.
WARNINGS = "type=Warning"
# What the object cache keeps: everything the status, the lists and the endpoints are read from.
CACHED = (
    Watched(JOBS, task_selector(KIND_TRAINING)),
    Watched(DEPLOYMENTS, INFERENCE_SELECTOR),
    Watched(SERVICES, INFERENCE_SELECTOR),
    Watched(PODS, {LABEL_MANAGED_BY: MANAGED_BY}),
    Watched(EVENTS, fields=WARNINGS),
)


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


def _task_kind(obj: dict[str, Any]) -> str:
    return _labels(obj).get(LABEL_TASK_KIND, "")


def _find(manifests: Objects, kind: str, task_kind: str | None = None) -> dict[str, Any] | None:
    """The manifest of that object kind (and task-kind label, if given)."""
    return next((m for m in manifests if m["kind"] == kind and (task_kind is None or _task_kind(m) == task_kind)),
                None)


def _autoscaled_replicas(live: dict[str, Any], autoscaler: dict[str, Any]) -> int:
    """The replicas the autoscaler chose (the live Deployment's), within its bounds as it keeps them."""
    spec = autoscaler["spec"]
    chosen = (live.get("spec") or {}).get("replicas", 1)
    return max(spec.get("minReplicas", 1), min(spec["maxReplicas"], chosen))


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
        log_followers: int = 64,
    ):
        self.namespace = namespace
        self.api = ClusterApi(api_client, namespace, retry, request_timeout_seconds)
        self.route = route or ApiServerProxyRoute(api_client.configuration, namespace)
        self.endpoints = EndpointCache()
        self.endpoint_refresh_seconds = endpoint_refresh_seconds
        self.log_wait_seconds = log_wait_seconds
        # A followed log holds a thread blocked on the API server's stream for as long as it is
        # followed: these threads, not the event loop's default pool that other calls share (the
        # services bound the streams to the same number; app/core/log_streams.py).
        self._log_threads = ThreadPoolExecutor(max_workers=log_followers, thread_name_prefix="log-follow")
        self.sync_timeout_seconds = sync_timeout_seconds
        self.cache = ObjectCache(self.api, CACHED, watch_timeout_seconds, watch_retry_delay_seconds)
        self._watch = EndpointWatch(self.cache, self.route, self.endpoints)
        self._refresh_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "KubernetesRuntime":
        connection = connect(settings)
        return cls(
            connection.api_client,
            connection.namespace,
            route=predict_route(settings.predict_route, connection),
            request_timeout_seconds=settings.kube_request_timeout_seconds,
            log_followers=settings.max_log_followers,
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._watch.attach(asyncio.get_running_loop())
        self.cache.start()
        # Serve predicts from the first request if the cluster answers; never hang start-up if not.
        if not await asyncio.to_thread(self.cache.wait_synced, self.sync_timeout_seconds):
            log.warning("the object cache has not listed the cluster yet; predicts answer 404 until it does, "
                        "status and lists read the API meanwhile")
        self._refresh_task = asyncio.create_task(self._restore_endpoints_forever())

    def unready_reason(self) -> str | None:
        return self.cache.unreachable_reason()

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        await asyncio.to_thread(self.cache.stop)
        self._watch.attach(None)
        self._log_threads.shutdown(wait=False, cancel_futures=True)  # followers were ended at shutdown

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
            self.cache.observe(resource, obj)
        first = made[0][1]
        return self._states(kind, [first], pods={}, events=[])[0]

    def _create_one(
        self, kind: str, task_id: str, manifest: dict[str, Any], made: Made
    ) -> tuple[Resource, dict[str, Any]]:
        resource = RESOURCE_OF_KIND[manifest["kind"]]
        name = manifest["metadata"]["name"]
        # The rest (the Service, a canary's Deployment and Service, the autoscaler) is owned by the
        # task's Deployment, so the cluster removes it with the Deployment whoever deletes that.
        owner = next((obj for r, obj in made if r is DEPLOYMENTS), None)
        body = _owned_by(manifest, owner) if owner is not None else manifest
        try:
            return resource, self.api.create(resource, body)
        except ObjectExists:
            pass
        if not made:
            state = self.get(kind, task_id, fresh=True)
            if state is not None:
                raise AlreadyExists(state) from None
        existing = self.api.get(resource, name)
        if made and existing is not None and _belongs(existing, _task_kind(manifest), task_id):
            return resource, existing  # made by an earlier try of this same create (its answer was lost)
        holder = _labels(existing or {}).get(LABEL_TASK_ID)
        whose = f"belongs to task '{holder}'" if holder else "was not made by this API"
        raise TaskConflict(
            f"a {manifest['kind']} named '{name}' already exists in namespace '{self.namespace}' and {whose}",
            field="modelId" if kind == KIND_INFERENCE else "taskId",
        )

    def update(self, kind: str, task_id: str, manifests: Objects, current: WorkloadState) -> WorkloadState:
        """Make the task's objects exactly `manifests`. The Deployment is replaced (its pod template:
        a new revision; its replicas; its rollout annotation: a canary's weight) and the cluster
        rolls it out with the strategy the manifest carries (a new pod ready before an old one
        stops). A canary's Deployment and Service are made or replaced before the Deployment's
        annotation names them, and removed after it no longer does; so is the autoscaler. While an
        autoscaler is wanted, the Deployment keeps the replicas it chose."""
        wanted = _find(manifests, "Deployment", KIND_INFERENCE)
        assert wanted is not None, "an inference task's manifests start with its Deployment"
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
        autoscaler = _find(manifests, "HorizontalPodAutoscaler")
        body = _replacing(wanted, live)
        if autoscaler is not None:
            body["spec"] = {**body["spec"], "replicas": _autoscaled_replicas(live, autoscaler)}
        made: Made = []
        try:
            # The canary's objects first: the Deployment's annotation names the canary only once they are there.
            for manifest in manifests:
                if _task_kind(manifest) == KIND_CANARY:
                    self._put(task_id, manifest, live, made)
            try:
                replaced = self.api.replace(DEPLOYMENTS, body)
            except ObjectGone:
                raise TaskNotFound(f"no deployment '{task_id}': its Deployment '{name}' is gone",
                                   field="taskId") from None
            except ObjectChanged:
                raise self._changed_meanwhile(task_id, name) from None
        except BaseException:
            self._remove(made)  # a refused update makes nothing
            raise
        self.cache.observe(DEPLOYMENTS, replaced)
        for manifest in manifests:
            if manifest["kind"] == "Service" and _task_kind(manifest) == KIND_INFERENCE:
                self._put(task_id, manifest, replaced, [], quiet=True)
        if autoscaler is not None:
            self._put(task_id, autoscaler, replaced, [], quiet=True)
        names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        self._remove_unwanted(task_id, names)
        return self._states(kind, [replaced], task_id=task_id)[0]

    def _put(self, task_id: str, manifest: dict[str, Any], owner: dict[str, Any], made: Made,
             quiet: bool = False) -> dict[str, Any] | None:
        """Create `manifest` (owned by `owner`, added to `made`) or replace the task's object of its
        name if that lacks what the manifest sets. A Service keeps its cluster IP and the rest the
        cluster filled in (spec keys the manifest does not set). With `quiet`, an object changed or
        gone meanwhile is logged and left (the Deployment, the new revision, is in already)."""
        resource = RESOURCE_OF_KIND[manifest["kind"]]
        name = manifest["metadata"]["name"]
        live = self.api.get(resource, name)
        try:
            if live is None:
                try:
                    obj = self.api.create(resource, _owned_by(manifest, owner))
                except ObjectExists:
                    raise ObjectChanged(f"{resource} '{name}' was made meanwhile") from None
                made.append((resource, obj))
            else:
                if not _belongs(live, _task_kind(manifest), task_id):
                    holder = _labels(live).get(LABEL_TASK_ID)
                    whose = f"belongs to task '{holder}'" if holder else "was not made by this API"
                    raise TaskConflict(f"a {manifest['kind']} named '{name}' already exists in namespace "
                                       f"'{self.namespace}' and {whose}", field="modelId")
                if _covers(live, manifest):
                    return live
                body = _replacing(manifest, live)
                if resource is SERVICES:
                    body["spec"] = {**(live.get("spec") or {}), **(manifest.get("spec") or {})}
                obj = self.api.replace(resource, body)
        except (ObjectGone, ObjectChanged) as exc:
            if not quiet:
                raise self._changed_meanwhile(task_id, name) from None
            log.warning("the %s %s was not updated: %s", manifest["kind"], name, exc)
            return None
        self.cache.observe(resource, obj)
        return obj

    def _remove_unwanted(self, task_id: str, wanted: set[tuple[str, str]]) -> None:
        """Delete the task's canary objects and autoscaler that are not among `wanted` (kind, name):
        a canary aborted or promoted, autoscaling turned off. The Service before its Deployment."""
        extras = [(SERVICES, KIND_CANARY, "Service"), (DEPLOYMENTS, KIND_CANARY, "Deployment"),
                  (HPAS, KIND_INFERENCE, "HorizontalPodAutoscaler")]
        for resource, task_kind, object_kind in extras:
            objects, _ = self.api.list(resource, task_selector(task_kind, task_id))
            for obj in objects:
                if (object_kind, obj["metadata"]["name"]) in wanted:
                    continue
                try:
                    self.api.delete(resource, obj["metadata"]["name"], obj["metadata"]["uid"])
                except TaskConflict as exc:  # made again meanwhile: that one is someone's newer wish
                    log.warning("the %s %s was not removed: %s", object_kind, obj["metadata"]["name"], exc)

    def _changed_meanwhile(self, task_id: str, name: str) -> TaskConflict:
        return TaskConflict(
            f"deployment '{task_id}' changed meanwhile (Deployment '{name}' in namespace '{self.namespace}' was "
            f"updated by someone else); read it again and retry",
            field="taskId",
        )

    def _remove(self, made: Made) -> None:
        for resource, obj in reversed(made):
            try:
                self.api.delete(resource, obj["metadata"]["name"], obj["metadata"].get("uid"))
            except MlopsError as exc:
                log.error("could not remove %s %s after a failed create: %s", resource, obj["metadata"]["name"], exc)

    def get(self, kind: str, task_id: str, fresh: bool = False) -> WorkloadState | None:
        """The task's state, from the object cache once it has listed the cluster (no API call);
        `fresh` reads the API itself (what a write decides on)."""
        if kind == KIND_TRAINING:
            if fresh or not self.cache.synced(JOBS):
                job = self.api.get(JOBS, job_name(task_id))
            else:
                job = next((j for j in self.cache.objects(JOBS, task_id) if j["metadata"]["name"] == job_name(task_id)),
                           None)
            objects = [job] if job is not None and _belongs(job, kind, task_id) else []
        else:
            deployments = self._objects(DEPLOYMENTS, kind, task_id, fresh)
            objects = [deployment] if (deployment := newest(deployments)) is not None else []
        states = self._states(kind, objects, task_id=task_id, fresh=fresh)
        return states[0] if states else None

    def list(self, kind: str) -> States:
        objects = self._objects(self._workload_resource(kind), kind)
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
            deleted = self.api.delete(JOBS, job["metadata"]["name"], job["metadata"]["uid"])
            if deleted:
                self.cache.forget(task_id, (KIND_TRAINING,))  # this API's next read says so at once
            return deleted
        # The Services first: predicts stop being routed before the pods go. The canary's objects
        # and the autoscaler are owned by the Deployment too (the garbage collector would remove
        # them), but are deleted here so that none outlives the answer.
        selector, canary = task_selector(kind, task_id), task_selector(KIND_CANARY, task_id)
        doomed = [(SERVICES, selector), (SERVICES, canary), (HPAS, selector), (DEPLOYMENTS, canary),
                  (DEPLOYMENTS, selector)]
        deleted = False
        for resource, labels in doomed:
            objects, _ = self.api.list(resource, labels)
            for obj in objects:
                deleted = self.api.delete(resource, obj["metadata"]["name"], obj["metadata"]["uid"]) or deleted
        if deleted:
            self.cache.forget(task_id, (KIND_INFERENCE, KIND_CANARY))
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
                chunk = await asyncio.get_running_loop().run_in_executor(self._log_threads, next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            follower.cancel()  # the reader went away: unblock and end the worker's read

    # -- state ---------------------------------------------------------------------------------------

    @staticmethod
    def _workload_resource(kind: str) -> Resource:
        return JOBS if kind == KIND_TRAINING else DEPLOYMENTS

    def _objects(self, resource: Resource, kind: str, task_id: str | None = None, fresh: bool = False) -> Objects:
        """The objects of that resource made for tasks of `kind` (that task only, if given): from
        the object cache when it can answer, else listed from the API."""
        if fresh or not self.cache.synced(resource):
            objects, _ = self.api.list(resource, task_selector(kind, task_id))
            return objects
        return [obj for obj in self.cache.objects(resource, task_id) if _belongs(obj, kind, task_id)]

    def _warnings(self, fresh: bool = False) -> Objects:
        if fresh or not self.cache.synced(EVENTS):
            events, _ = self.api.list(EVENTS, fields=WARNINGS)
            return events
        return self.cache.objects(EVENTS)

    def _states(
        self,
        kind: str,
        objects: Objects,
        task_id: str | None = None,
        pods: PodsByTask | None = None,
        events: Objects | None = None,
        fresh: bool = False,
    ) -> States:
        """States of `objects` (Jobs or Deployments), with pods and events read only when they can tell more."""
        phase_of: PhaseOf = training_phase if kind == KIND_TRAINING else inference_phase
        phases = {id(obj): phase_of(obj, [], []) for obj in objects}
        # Which revision serves is told by the pods while a rollout goes on.
        rolling = kind == KIND_INFERENCE and not all(rollout_complete(obj) for obj in objects)
        if pods is None and (rolling or any(phase not in _SETTLED for phase, _ in phases.values())):
            pods = self._pods_by_task(kind, task_id, fresh)
        listed = pods is not None
        pods = pods or {}
        if listed:  # else every phase was read without pods already
            phases = {id(obj): phase_of(obj, pods.get(_labels(obj)[LABEL_TASK_ID], []), []) for obj in objects}
        if events is None and any(phase in _PENDING for phase, _ in phases.values()):
            events = self._warnings(fresh)
            phases = {
                id(obj): phase_of(obj, pods.get(_labels(obj)[LABEL_TASK_ID], []), events) for obj in objects
            }
        states = [self._state(kind, obj, *phases[id(obj)]) for obj in objects]
        if kind == KIND_INFERENCE:
            for state, obj in zip(states, objects, strict=True):
                task_pods = pods.get(state.task_id, []) if listed else None
                state.serving_revision, state.revision_problem = revision_status(obj, task_pods)
            self._canary_states([state for state in states if (state.rollout or {}).get("canary")], task_id, events,
                                fresh)
        return states

    def _canary_states(self, states: States, task_id: str | None, events: Objects | None, fresh: bool) -> None:
        """The readiness of the canaries the states' rollouts name, and why one is not ready."""
        if not states:
            return
        listed = self._objects(DEPLOYMENTS, KIND_CANARY, task_id, fresh)
        groups: PodsByTask = defaultdict(list)
        for obj in listed:
            groups[_labels(obj).get(LABEL_TASK_ID, "")].append(obj)
        canaries = {task: newest(group) for task, group in groups.items()}
        phases = {task: inference_phase(obj, []) for task, obj in canaries.items() if obj is not None}
        pods = (self._pods_by_task(KIND_CANARY, task_id, fresh)
                if any(phase != DeploymentStatus.READY for phase, _ in phases.values()) else {})
        if events is None and any(phase in _PENDING for phase, _ in phases.values()):
            events = self._warnings(fresh)
        for state in states:
            canary = canaries.get(state.task_id)
            wanted = (state.rollout or {})["canary"].get("revision")
            if canary is None:
                state.canary_ready_replicas, state.canary_problem = 0, "the canary's Deployment is missing"
                continue
            state.canary_ready_replicas = (canary.get("status") or {}).get("readyReplicas", 0)
            phase, message = inference_phase(canary, pods.get(state.task_id, []), events or [])
            running = template_revision_of(canary["spec"]["template"])
            if phase != DeploymentStatus.READY:
                state.canary_problem = message
            elif running != wanted:
                state.canary_problem = f"the canary's Deployment runs revision {running}, not {wanted} yet"

    def _pods_by_task(self, kind: str, task_id: str | None, fresh: bool = False) -> PodsByTask:
        pods = self._objects(PODS, kind, task_id, fresh)
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
