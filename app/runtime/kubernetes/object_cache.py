"""The project's objects as the cluster holds them, kept current by list and watch (what client-go
calls an informer): the status and list routes, and the predict path's endpoints, read them here
instead of calling the Kubernetes API.

One thread per resource lists, then watches from the list's resourceVersion. A stream the server
ends (its timeout) is resumed from the last resourceVersion seen, which replays what happened in
between; 410 Gone (that history was compacted) re-lists at once; a dropped connection or any other
error re-lists after a pause, longer each time the API stays down.

Each object is kept slim (only what the status and the endpoints are read from: no managedFields,
no pod template of a Job) and as its compact JSON, decoded on each read: as Python dicts a task's
Job and pod take about 11 KiB, as bytes about 2, and a read of a thousand costs a few milliseconds.
A read gets its own copy, which its caller may change. Listeners are told which task ids changed,
under the cache's lock.
"""

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from kubernetes import watch

from app.core.manifests import LABEL_TASK_ID, LABEL_TASK_KIND
from app.errors import MlopsError
from app.runtime.kubernetes.api import (
    DEPLOYMENTS,
    EVENTS,
    JOBS,
    PODS,
    SERVICES,
    ClusterApi,
    Resource,
    Selector,
    WatchExpired,
    raw_watch,
)

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_SECONDS = 30.0
Obj = dict[str, Any]
# Told the task ids whose objects changed (None among them: an object without a task id).
Listener = Callable[[set[str | None]], None]


@dataclass(frozen=True)
class Watched:
    """A resource the cache keeps, and which of its objects (a label and a field selector)."""

    resource: Resource
    labels: Selector | None = None
    fields: str | None = None


_METADATA = ("name", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "labels",
             "annotations")


def _slim_metadata(obj: Obj) -> Obj:
    metadata = obj.get("metadata") or {}
    return {key: metadata[key] for key in _METADATA if key in metadata}


def slim(resource: Resource, obj: Obj) -> Obj:
    """What the status and the endpoints read of an object (app/runtime/kubernetes/status.py,
    endpoint_watch.py); the rest of it is read from the API by whatever needs it (an update)."""
    kept: Obj = {"metadata": _slim_metadata(obj)}
    if resource is EVENTS:
        return {**kept, **{key: obj[key] for key in ("type", "reason", "message", "involvedObject", "lastTimestamp",
                                                       "eventTime") if key in obj}}
    if "status" in obj:
        kept["status"] = obj["status"]
    spec = obj.get("spec") or {}
    if resource is DEPLOYMENTS:
        template = spec.get("template") or {}
        kept["spec"] = {"replicas": spec.get("replicas", 1),
                        "template": {"metadata": {"labels": (template.get("metadata") or {}).get("labels") or {}}}}
    elif resource is PODS:
        containers = [{"name": c.get("name"), "resources": {"limits": (c.get("resources") or {}).get("limits") or {}}}
                      for c in spec.get("containers") or []]
        kept["spec"] = {"containers": containers}
    elif resource is SERVICES:
        kept["spec"] = {"ports": spec.get("ports") or []}
    elif resource is not JOBS:
        kept["spec"] = spec
    return kept


def _name(obj: Obj) -> str:
    return obj["metadata"]["name"]


class Kept(NamedTuple):
    """An object as the cache keeps it: what its index, deletions and ordering need, and its slim JSON."""

    task_id: str | None
    task_kind: str | None
    uid: str | None
    resource_version: str | None
    json: bytes


def _older(candidate: str | None, kept: str | None) -> bool:
    """Whether `candidate` is an older version than `kept`. resourceVersions are etcd revisions,
    integers, on every API server (k3s's kine too), compared as client-go's mutation cache does;
    versions that are not numbers are taken as newer."""
    try:
        return int(candidate or "") < int(kept or "")
    except ValueError:
        return False


def task_id_of(obj: Obj) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_TASK_ID)


def _task_kind_of(obj: Obj) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_TASK_KIND)


class ObjectCache:
    def __init__(
        self,
        api: ClusterApi,
        watched: Sequence[Watched],
        watch_timeout_seconds: int = 240,
        retry_delay_seconds: float = 1.0,
    ):
        self.api = api
        self.watched = tuple(watched)
        self.watch_timeout_seconds = watch_timeout_seconds
        self.retry_delay_seconds = retry_delay_seconds
        # Reentrant: a listener, called under it, reads the objects back.
        self.lock = threading.RLock()
        # Slim objects by resource and name, and the names of each task's objects.
        self._objects: dict[Resource, dict[str, Kept]] = {w.resource: {} for w in self.watched}
        self._by_task: dict[Resource, dict[str | None, set[str]]] = {w.resource: defaultdict(set)
                                                                     for w in self.watched}
        self._listeners: list[Listener] = []
        self._stopping = threading.Event()
        self._synced = {w.resource: threading.Event() for w in self.watched}
        # Why the last list of a resource failed, until one succeeds again: the API's readiness.
        self._list_errors: dict[Resource, str] = {}
        self._active_watches: set[watch.Watch] = set()
        self._threads: list[threading.Thread] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._run, args=(w,), name=f"watch-{w.resource.plural}",
                                          daemon=True) for w in self.watched]
        for thread in self._threads:
            thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """Block until every resource was listed once (or `timeout` passed); True if they were."""
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self._synced.values())

    def synced(self, *resources: Resource) -> bool:
        """Whether these resources (all if none named) were listed and are being watched: only
        then can the cache answer for them."""
        return all(self._synced[r].is_set() and r not in self._list_errors for r in resources or self._synced)

    def unreachable_reason(self) -> str | None:
        """Why the cluster cannot be used now (its last list failed, or none was made yet); None if it can."""
        with self.lock:
            errors = list(self._list_errors.values())
        if errors:
            return errors[0]
        if not all(event.is_set() for event in self._synced.values()):
            return "the Kubernetes API has not answered a list of the project's objects yet"
        return None

    def stop(self) -> None:
        self._stopping.set()
        with self.lock:
            watches = list(self._active_watches)
        for watcher in watches:
            watcher.stop()  # shuts the socket down, so a blocked read returns at once
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    # -- reads ---------------------------------------------------------------------------------------

    def objects(self, resource: Resource, task_id: str | None = None) -> list[Obj]:
        """The resource's objects (the task's only, if given)."""
        with self.lock:
            objects = self._objects[resource]
            if task_id is None:
                kept = [entry.json for entry in objects.values()]
            else:
                kept = [objects[name].json for name in self._by_task[resource].get(task_id, ())]
        return [orjson.loads(raw) for raw in kept]

    def task_ids(self) -> set[str | None]:
        with self.lock:
            return {task for index in self._by_task.values() for task, names in index.items() if names}

    # -- what the runtime itself just did, so that reads need not wait for the watch ----------------

    def observe(self, resource: Resource, obj: Obj) -> None:
        if resource not in self._objects:
            return
        with self.lock:
            self._put(resource, obj)
            self._tell({task_id_of(obj)})

    def forget(self, task_id: str, task_kinds: Sequence[str]) -> None:
        """Drop the objects of that task id and task kinds (the runtime deleted them): a training
        task and a deployment may share an id, and deleting one leaves the other."""
        with self.lock:
            for resource, objects in self._objects.items():
                for name in list(self._by_task[resource].get(task_id, ())):
                    if objects[name].task_kind in task_kinds:
                        self._drop(resource, name)
            self._tell({task_id})

    # -- under the lock ------------------------------------------------------------------------------

    def _put(self, resource: Resource, obj: Obj) -> None:
        """Keep `obj` unless a newer version of it is kept: the answer to the runtime's own create
        can reach observe() after the watch has brought a later change of the object."""
        name = _name(obj)
        metadata = obj["metadata"]
        before = self._objects[resource].get(name)
        if before is not None:
            if before.uid == metadata.get("uid") and _older(metadata.get("resourceVersion"), before.resource_version):
                return
            self._by_task[resource][before.task_id].discard(name)
        # Copied to its own length: orjson's answer keeps the 4 KiB buffer it was written into.
        compact = bytes(memoryview(orjson.dumps(slim(resource, obj))))
        kept = Kept(task_id_of(obj), _task_kind_of(obj), metadata.get("uid"), metadata.get("resourceVersion"), compact)
        self._objects[resource][name] = kept
        self._by_task[resource][kept.task_id].add(name)

    def _drop(self, resource: Resource, name: str) -> None:
        gone = self._objects[resource].pop(name, None)
        if gone is not None:
            names = self._by_task[resource][gone.task_id]
            names.discard(name)
            if not names:
                del self._by_task[resource][gone.task_id]

    def _tell(self, task_ids: set[str | None]) -> None:
        for listener in self._listeners:
            listener(task_ids)

    # -- the watch threads ---------------------------------------------------------------------------

    def _run(self, watched: Watched) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist(watched)
                    self._synced[watched.resource].set()
                    failures = 0
                resource_version = self._follow(watched, resource_version)
                # The server ended the stream (its timeout): credentials may have been refreshed since.
                with self.lock:
                    self._tell(self.task_ids())
            except WatchExpired:
                log.info("watch of %s expired (410); re-listing", watched.resource)
                resource_version = None
            except Exception as exc:  # a dropped stream, an unreachable API: re-list after a pause
                if self._stopping.is_set():
                    break
                delay = min(MAX_RETRY_DELAY_SECONDS, self.retry_delay_seconds * 2**failures)
                failures += 1
                log.warning("watch of %s failed (%s: %s); re-listing in %.1f s", watched.resource,
                            type(exc).__name__, exc, delay)
                resource_version = None
                self._stopping.wait(delay)

    def _relist(self, watched: Watched) -> str:
        # A list is what tells whether the cluster can be used: a watch stream may drop while it can.
        resource = watched.resource
        try:
            items, resource_version = self.api.list(resource, watched.labels, watched.fields)
        except Exception as exc:
            reason = exc.message if isinstance(exc, MlopsError) else f"{type(exc).__name__}: {exc}"
            with self.lock:
                self._list_errors[resource] = reason
            raise
        with self.lock:
            self._list_errors.pop(resource, None)
            before = set(self._by_task[resource])
            self._objects[resource] = {}
            self._by_task[resource] = defaultdict(set)
            for obj in items:
                self._put(resource, obj)
            self._tell(before | set(self._by_task[resource]))
        return resource_version

    def _follow(self, watched: Watched, resource_version: str) -> str:
        watcher = raw_watch()
        with self.lock:
            if self._stopping.is_set():
                return resource_version
            self._active_watches.add(watcher)
        try:
            events = self.api.watch(watched.resource, watched.labels, resource_version, self.watch_timeout_seconds,
                                    watcher, watched.fields)
            for event in events:
                obj = event.get("raw_object") or event.get("object") or {}
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply_event(watched.resource, obj, deleted=event["type"] == "DELETED")
                # BOOKMARK: only its resourceVersion matters.
        finally:
            with self.lock:
                self._active_watches.discard(watcher)
        return resource_version

    def _apply_event(self, resource: Resource, obj: Obj, deleted: bool) -> None:
        with self.lock:
            name = _name(obj)
            if not deleted:
                self._put(resource, obj)
            else:
                kept = self._objects[resource].get(name)
                # Only that incarnation: a namesake created since (the same task again) stays.
                if kept is not None and kept.uid == obj["metadata"].get("uid"):
                    self._drop(resource, name)
            self._tell({task_id_of(obj)})
