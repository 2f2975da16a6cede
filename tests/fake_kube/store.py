"""The fake API's state: namespaced objects with resourceVersions and uids, the watch history, pod logs.

One condition variable guards it all; watch and log streams wait on it for news. Deletion follows
ownerReferences as the garbage collector does: Background and Foreground remove the dependents,
Orphan (the batch/v1 default for Jobs) leaves them without their owner.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fake_kube.selectors import matches_fields, matches_labels

# Deleting a Job through batch/v1 without a propagationPolicy orphans its pods (kept for compatibility).
DEFAULT_PROPAGATION = {"jobs": "Orphan"}
_EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


# Group of each resource the fake serves ("" is the core group), as a Status's details name it.
GROUPS = {"deployments": "apps", "jobs": "batch", "horizontalpodautoscalers": "autoscaling"}
# Spec fields the API server refuses to change on update.
IMMUTABLE = {"deployments": ("selector",), "jobs": ("selector", "template"), "services": ("clusterIP",)}
# Set by the API server on create; an update that leaves them out keeps them.
SERVER_SET_SPEC = {"services": ("clusterIP", "clusterIPs")}


class ApiError(Exception):
    """Answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def _qualified(resource: str) -> str:
    group = GROUPS.get(resource, "")
    return f"{resource}.{group}" if group else resource


def _conflict(resource: str, name: str, why: str) -> ApiError:
    """409 as the API server words an update over a stale object."""
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": {why}',
                    {"name": name, "group": GROUPS.get(resource, ""), "kind": resource})


@dataclass(frozen=True)
class WatchEvent:
    resource_version: int
    resource: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]


class ObjectStore:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        # As etcd's revision, never 0 (a watch from "0" means "from any point, with everything"),
        # even before the first write: an empty list's resourceVersion is a real one to resume from.
        self.resource_version = 1
        self.history: list[WatchEvent] = []
        # Watches resuming from before this resourceVersion get 410 Gone.
        self.compacted_before = 0
        self.logs: dict[tuple[str, str], bytearray] = {}
        # A clock that ticks one second per reading, so creation times order every object.
        self._ticks = itertools.count()

    def now(self) -> str:
        return (_EPOCH + timedelta(seconds=next(self._ticks))).strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- under the lock ----------------------------------------------------------------------------

    def _emit(self, event_type: str, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        snapshot = copy.deepcopy(obj)
        self.history.append(WatchEvent(self.resource_version, resource, namespace, event_type, snapshot))
        self.cond.notify_all()
        return copy.deepcopy(obj)

    def _require(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((resource, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return obj

    # -- objects ---------------------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{resource}: metadata.name: Required value")
        with self.cond:
            if (resource, namespace, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=self.now(), generation=1)
            obj.setdefault("status", {})
            if resource == "services":
                obj.setdefault("spec", {})["clusterIP"] = f"10.43.0.{len(self.objects) % 250 + 1}"
            self.objects[(resource, namespace, name)] = obj
            return self._emit("ADDED", resource, namespace, obj)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, resource: str, namespace: str, labels: str | None = None, fields: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (kind, ns, _), obj in sorted(self.objects.items())
                if kind == resource
                and ns == namespace
                and matches_labels(labels, obj["metadata"].get("labels"))
                and matches_fields(fields, obj)
            ]
            return items, self.resource_version

    def update(
        self, resource: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """A change made in place, as a controller or the kubelet writes (status included); a spec
        change bumps the generation, as the API server does."""
        with self.cond:
            obj = self._require(resource, namespace, name)
            before = copy.deepcopy(obj.get("spec"))
            change(obj)
            if obj.get("spec") != before:
                obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            return self._emit("MODIFIED", resource, namespace, obj)

    def replace(self, resource: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT: the object becomes `body`, as the API server does it. A `resourceVersion` or `uid`
        in the body must be the stored one (else 409 Conflict; none: an unconditional update); the
        status, the server-set metadata and a Service's cluster IP stay; a spec change bumps the
        generation; immutable fields must not change (422)."""
        new = copy.deepcopy(body)
        metadata = new.setdefault("metadata", {})
        if metadata.get("name") != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({metadata.get('name')}) does not match the "
                                              f"name on the URL ({name})")
        with self.cond:
            obj = self._require(resource, namespace, name)
            current = obj["metadata"]
            wanted_version = metadata.get("resourceVersion")
            if wanted_version and wanted_version != current["resourceVersion"]:
                raise _conflict(resource, name, "the object has been modified; please apply your changes to the "
                                                "latest version and try again")
            if metadata.get("uid") and metadata["uid"] != current["uid"]:
                raise _conflict(resource, name, f"Precondition failed: UID in precondition: {metadata['uid']}, UID "
                                                f"in object meta: {current['uid']}")
            spec, old_spec = new.setdefault("spec", {}), obj.get("spec") or {}
            for key in SERVER_SET_SPEC.get(resource, ()):
                if key in old_spec:
                    spec.setdefault(key, old_spec[key])
            for key in IMMUTABLE.get(resource, ()):
                if spec.get(key) != old_spec.get(key):
                    raise ApiError(422, "Invalid", f'{GROUPS.get(resource, "")}{resource[:-1].capitalize()} '
                                   f'"{name}" is invalid: spec.{key}: Invalid value: field is immutable')
            generation = current.get("generation", 1) + (1 if spec != old_spec else 0)
            metadata.update(namespace=namespace, uid=current["uid"], creationTimestamp=current["creationTimestamp"],
                            generation=generation)
            new["status"] = obj.get("status") or {}
            self.objects[(resource, namespace, name)] = new
            return self._emit("MODIFIED", resource, namespace, new)

    def delete(
        self, resource: str, namespace: str, name: str, propagation: str | None = None, uid: str | None = None
    ) -> dict[str, Any]:
        with self.cond:
            obj = self._require(resource, namespace, name)
            if uid and obj["metadata"]["uid"] != uid:
                raise ApiError(
                    409, "Conflict", f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    f"{obj['metadata']['uid']}"
                )
            policy = propagation or DEFAULT_PROPAGATION.get(resource, "Background")
            del self.objects[(resource, namespace, name)]
            gone = self._emit("DELETED", resource, namespace, obj)
            self._collect_dependents(namespace, obj["metadata"]["uid"], orphan=policy == "Orphan")
            if resource == "pods":
                self.logs.pop((namespace, name), None)
            return gone

    def _collect_dependents(self, namespace: str, owner_uid: str, orphan: bool) -> None:
        for (resource, ns, name), obj in list(self.objects.items()):
            references = obj["metadata"].get("ownerReferences") or []
            if ns != namespace or not any(ref.get("uid") == owner_uid for ref in references):
                continue
            if orphan:
                obj["metadata"]["ownerReferences"] = [ref for ref in references if ref.get("uid") != owner_uid]
                self._emit("MODIFIED", resource, ns, obj)
            else:
                del self.objects[(resource, ns, name)]
                self._emit("DELETED", resource, ns, obj)
                self._collect_dependents(ns, obj["metadata"]["uid"], orphan=False)

    # -- watch history -----------------------------------------------------------------------------

    def events_after(
        self, resource_version: int, resource: str, namespace: str, labels: str | None, fields: str | None
    ) -> list[WatchEvent]:
        """Under the lock: what happened to matching objects after `resource_version`."""
        return [
            event
            for event in self.history
            if event.resource_version > resource_version
            and event.resource == resource
            and event.namespace == namespace
            and matches_labels(labels, event.obj["metadata"].get("labels"))
            and matches_fields(fields, event.obj)
        ]

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: resuming from an older resourceVersion is 410 Gone."""
        with self.cond:
            self.compacted_before = self.resource_version
            self.history.clear()
            self.cond.notify_all()

    # -- logs ------------------------------------------------------------------------------------------

    def append_log(self, namespace: str, pod: str, data: bytes) -> None:
        with self.cond:
            self.logs.setdefault((namespace, pod), bytearray()).extend(data)
            self.cond.notify_all()

    def log_of(self, namespace: str, pod: str) -> bytes:
        with self.cond:
            return bytes(self.logs.get((namespace, pod), b""))
