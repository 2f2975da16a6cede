"""The predict path's view of the cluster: a watch on the project's inference Deployments and Services
(the stable revision's and a canary's) keeps the EndpointCache current, so that no predict request
calls the Kubernetes API. A canary's weight is in the stable Deployment's rollout annotation: a
change of the weight alone is a MODIFIED event of that Deployment.

One thread per resource lists, then watches from the list's resourceVersion. A stream the server
ends (its timeout) is resumed from the last resourceVersion seen, which replays what happened in
between; 410 Gone (that history was compacted) re-lists at once; a dropped connection or any other
error re-lists after a pause. The threads never touch the cache themselves: changes are handed to
the event loop (call_soon_threadsafe), where the predict proxy reads and marks it.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import watch

from app.core.manifests import (
    KIND_CANARY,
    KIND_INFERENCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_ID,
    LABEL_PROFILE,
    LABEL_TASK_ID,
    LABEL_TASK_KIND,
    MANAGED_BY,
    revision_of,
    rollout_of,
    served_model_name_of,
)
from app.errors import MlopsError
from app.runtime.base import Canary, Endpoint, EndpointCache
from app.runtime.kubernetes.api import DEPLOYMENTS, SERVICES, ClusterApi, Resource, WatchExpired, raw_watch
from app.runtime.kubernetes.routes import ServiceRoute
from app.runtime.kubernetes.status import inference_phase
from app.schemas.inference import DeploymentStatus

log = logging.getLogger(__name__)

WATCHED = (DEPLOYMENTS, SERVICES)
MAX_RETRY_DELAY_SECONDS = 30.0
# Every inference object this API made, a canary's too: app.kubernetes.io/managed-by and mlops.dev/task-kind.
INFERENCE_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TASK_KIND} in ({KIND_INFERENCE},{KIND_CANARY})"


@dataclass(frozen=True)
class TaskEndpoints:
    """What the cache holds for a task: its stable endpoint (None: no entry) and its canary."""

    stable: Endpoint | None
    canary: Canary | None = None


EndpointChanges = dict[str, TaskEndpoints]


def _name(obj: dict[str, Any]) -> str:
    return obj["metadata"]["name"]


def _task_id(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_TASK_ID)


def _task_kind(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_TASK_KIND)


class EndpointWatch:
    def __init__(
        self,
        api: ClusterApi,
        route: ServiceRoute,
        endpoints: EndpointCache,
        watch_timeout_seconds: int = 240,
        retry_delay_seconds: float = 1.0,
    ):
        self.api = api
        self.route = route
        self.endpoints = endpoints
        self.watch_timeout_seconds = watch_timeout_seconds
        self.retry_delay_seconds = retry_delay_seconds
        # What the cluster holds, by resource and object name, as last listed or watched.
        self._objects: dict[Resource, dict[str, dict[str, Any]]] = {resource: {} for resource in WATCHED}
        # What the cache should hold, by task id.
        self._desired: dict[str, TaskEndpoints] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._synced = {resource: threading.Event() for resource in WATCHED}
        # Why the last list of a resource failed, until one succeeds again: the API's readiness.
        self._list_errors: dict[Resource, str] = {}
        self._active_watches: set[watch.Watch] = set()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (called from the runtime) ------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(resource,), name=f"endpoint-watch-{resource.plural}", daemon=True)
            for resource in WATCHED
        ]
        for thread in self._threads:
            thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """Block until both resources were listed once (or `timeout` passed); True if they were."""
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self._synced.values())

    def unreachable_reason(self) -> str | None:
        """Why the cluster cannot be used now (its last list failed, or none was made yet); None if it can."""
        with self._lock:
            errors = list(self._list_errors.values())
        if errors:
            return errors[0]
        if not all(event.is_set() for event in self._synced.values()):
            return "the Kubernetes API has not answered a list of the inference Deployments and Services yet"
        return None

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            watches = list(self._active_watches)
        for watcher in watches:
            watcher.stop()  # shuts the socket down, so a blocked read returns at once
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        self._loop = None

    # -- what the runtime itself just did, so the cache need not wait for the watch ---------------

    def observe(self, resource: Resource, obj: dict[str, Any]) -> None:
        with self._lock:
            self._objects[resource][_name(obj)] = obj
            self._publish(self._recompute([_task_id(obj)]))

    def forget(self, task_id: str) -> None:
        with self._lock:
            for objects in self._objects.values():
                for name in [name for name, obj in objects.items() if _task_id(obj) == task_id]:
                    del objects[name]
            self._publish(self._recompute([task_id]))

    def restore_marked_unready(self) -> None:
        """On the loop: undo the proxy's mark_unready for endpoints the cluster still says are ready.

        The proxy marks an endpoint unready after a connection failure; no watch event may follow
        (the Deployment did not change), so without this it would stay unready for good.
        """
        with self._lock:
            desired = list(self._desired.items())
        for task_id, wanted in desired:
            current = self.endpoints.get(task_id)
            if wanted.stable is not None and wanted.stable.ready and current is not None and not current.ready:
                self.endpoints.put(wanted.stable)
            canary = self.endpoints.canary(task_id)
            if wanted.canary is not None and wanted.canary.endpoint.ready and canary is not None \
                    and not canary.endpoint.ready:
                self.endpoints.put_canary(task_id, wanted.canary)

    # -- the watch threads ------------------------------------------------------------------------

    def _run(self, resource: Resource) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist(resource)
                    self._synced[resource].set()
                    failures = 0
                resource_version = self._follow(resource, resource_version)
                # The server ended the stream (its timeout): credentials may have been refreshed since.
                with self._lock:
                    self._publish(self._recompute(self._all_task_ids()))
            except WatchExpired:
                log.info("watch of %s expired (410); re-listing", resource)
                resource_version = None
            except Exception as exc:  # a dropped stream, an unreachable API: re-list after a pause
                if self._stopping.is_set():
                    break
                # While the API stays down, pause longer each time (up to MAX_RETRY_DELAY_SECONDS).
                delay = min(MAX_RETRY_DELAY_SECONDS, self.retry_delay_seconds * 2**failures)
                failures += 1
                log.warning("watch of %s failed (%s: %s); re-listing in %.1f s", resource, type(exc).__name__, exc,
                            delay)
                resource_version = None
                self._stopping.wait(delay)

    def _relist(self, resource: Resource) -> str:
        # A list is what tells whether the cluster can be used: a watch stream may drop while it can.
        try:
            items, resource_version = self.api.list(resource, INFERENCE_SELECTOR)
        except Exception as exc:
            reason = exc.message if isinstance(exc, MlopsError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._list_errors[resource] = reason
            raise
        with self._lock:
            self._list_errors.pop(resource, None)
            before = {_task_id(obj) for obj in self._objects[resource].values()}
            self._objects[resource] = {_name(obj): obj for obj in items}
            after = {_task_id(obj) for obj in items}
            self._publish(self._recompute(before | after))
        return resource_version

    def _follow(self, resource: Resource, resource_version: str) -> str:
        watcher = raw_watch()
        with self._lock:
            if self._stopping.is_set():
                return resource_version
            self._active_watches.add(watcher)
        try:
            events = self.api.watch(
                resource, INFERENCE_SELECTOR, resource_version, self.watch_timeout_seconds, watcher
            )
            for event in events:
                obj = event.get("raw_object") or event.get("object") or {}
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._apply_event(resource, obj, deleted=False)
                elif event.get("type") == "DELETED":
                    self._apply_event(resource, obj, deleted=True)
                # BOOKMARK: only its resourceVersion matters.
        finally:
            with self._lock:
                self._active_watches.discard(watcher)
        return resource_version

    def _apply_event(self, resource: Resource, obj: dict[str, Any], deleted: bool) -> None:
        with self._lock:
            objects = self._objects[resource]
            name = _name(obj)
            if not deleted:
                objects[name] = obj
            elif name in objects and objects[name]["metadata"].get("uid") == obj["metadata"].get("uid"):
                # Only that incarnation: a namesake created since (same task re-deployed) stays.
                del objects[name]
            self._publish(self._recompute([_task_id(obj)]))

    # -- endpoints (under the lock) -----------------------------------------------------------------

    def _all_task_ids(self) -> set[str | None]:
        return {_task_id(obj) for objects in self._objects.values() for obj in objects.values()}

    def _recompute(self, task_ids: Iterable[str | None]) -> EndpointChanges:
        changes: EndpointChanges = {}
        for task_id in task_ids:
            if task_id is None:
                continue
            stable = self._endpoint(task_id, KIND_INFERENCE)
            wanted = TaskEndpoints(stable, self._canary(task_id) if stable is not None else None)
            if wanted != self._desired.get(task_id, TaskEndpoints(None)):
                changes[task_id] = wanted
        return changes

    def _pair(self, task_id: str, task_kind: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The task's Deployment and Service of that task kind (the stable revision's or the canary's)."""
        deployment, service = (
            next((obj for obj in self._objects[resource].values()
                  if _task_id(obj) == task_id and _task_kind(obj) == task_kind), None)
            for resource in WATCHED
        )
        return deployment, service

    def _endpoint(self, task_id: str, task_kind: str) -> Endpoint | None:
        deployment, service = self._pair(task_id, task_kind)
        source = service or deployment
        if source is None:
            return None
        who = "the model's" if task_kind == KIND_INFERENCE else "the canary's"
        labels = source["metadata"].get("labels") or {}
        profile = labels.get(LABEL_PROFILE, "")
        target = self.route.target(_name(source))
        message: str | None
        if deployment is None:
            ready, message = False, f"{who} Deployment is missing"
        elif service is None:
            ready, message = False, f"{who} Service is missing"
        else:
            phase, message = inference_phase(deployment, [])
            ready = phase == DeploymentStatus.READY
        revision = revision_of(deployment["spec"]["template"]) if deployment is not None else None
        return Endpoint(task_id, target.base_url, ready, profile, message, target.headers, target.tls,
                        labels.get(LABEL_MODEL_ID), served_model_name_of(source), revision)

    def _canary(self, task_id: str) -> Canary | None:
        """The canary the stable Deployment's rollout annotation names, at its weight, if its objects are there."""
        stable, _ = self._pair(task_id, KIND_INFERENCE)
        record = (rollout_of(stable) or {}).get("canary") if stable is not None else None
        if not record:
            return None
        endpoint = self._endpoint(task_id, KIND_CANARY)
        if endpoint is None:
            return None
        if endpoint.ready and endpoint.revision != record.get("revision"):
            # The canary's Deployment is being replaced by another revision's: not this canary yet.
            endpoint = replace(endpoint, ready=False,
                               message=f"the canary's Deployment does not run revision {record.get('revision')} yet")
        return Canary(endpoint, int(record["weight"]))

    def _publish(self, changes: EndpointChanges) -> None:
        if not changes:
            return
        for task_id, wanted in changes.items():
            if wanted.stable is None:
                self._desired.pop(task_id, None)
            else:
                self._desired[task_id] = wanted
        loop = self._loop
        if loop is None:
            self._apply_to_cache(changes)
            return
        try:
            loop.call_soon_threadsafe(self._apply_to_cache, changes)
        except RuntimeError:  # the loop closed meanwhile
            self._apply_to_cache(changes)

    def _apply_to_cache(self, changes: EndpointChanges) -> None:
        for task_id, wanted in changes.items():
            if wanted.stable is None:
                self.endpoints.remove(task_id)  # and its canary
            else:
                self.endpoints.put(wanted.stable)
                self.endpoints.put_canary(task_id, wanted.canary)
