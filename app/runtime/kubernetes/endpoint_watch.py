"""The predict path's view of the cluster: the project's inference Deployments and Services (the
stable revision's and a canary's), as the object cache (object_cache.py) keeps them, turned into the
EndpointCache, so that no predict request calls the Kubernetes API. A canary's weight is in the
stable Deployment's rollout annotation: a change of the weight alone is a MODIFIED event of that
Deployment.

The cache's watch threads tell this which tasks changed; the endpoints are recomputed there, and
handed to the event loop (call_soon_threadsafe), where the predict proxy reads and marks them.
"""

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from app.core.manifests import (
    KIND_CANARY,
    KIND_INFERENCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_ID,
    LABEL_PROFILE,
    LABEL_TASK_KIND,
    MANAGED_BY,
    revision_of,
    rollout_of,
    served_model_name_of,
)
from app.runtime.base import Canary, Endpoint, EndpointCache
from app.runtime.kubernetes.api import DEPLOYMENTS, SERVICES
from app.runtime.kubernetes.object_cache import ObjectCache
from app.runtime.kubernetes.routes import ServiceRoute
from app.runtime.kubernetes.status import inference_phase
from app.schemas.inference import DeploymentStatus

WATCHED = (DEPLOYMENTS, SERVICES)
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


def _task_kind(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_TASK_KIND)


class EndpointWatch:
    def __init__(self, cache: ObjectCache, route: ServiceRoute, endpoints: EndpointCache):
        self.cache = cache
        self.route = route
        self.endpoints = endpoints
        # What the EndpointCache should hold, by task id (under the object cache's lock).
        self._desired: dict[str, TaskEndpoints] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        cache.subscribe(self._changed)

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Hand changes to `loop` from now on (None: apply them in the calling thread)."""
        self._loop = loop

    def restore_marked_unready(self) -> None:
        """On the loop: undo the proxy's mark_unready for endpoints the cluster still says are ready.

        The proxy marks an endpoint unready after a connection failure; no watch event may follow
        (the Deployment did not change), so without this it would stay unready for good.
        """
        with self.cache.lock:
            desired = list(self._desired.items())
        for task_id, wanted in desired:
            current = self.endpoints.get(task_id)
            if wanted.stable is not None and wanted.stable.ready and current is not None and not current.ready:
                self.endpoints.put(wanted.stable)
            canary = self.endpoints.canary(task_id)
            if wanted.canary is not None and wanted.canary.endpoint.ready and canary is not None \
                    and not canary.endpoint.ready:
                self.endpoints.put_canary(task_id, wanted.canary)

    def _changed(self, task_ids: set[str | None]) -> None:
        self._publish(self._recompute(task_ids))

    # -- endpoints (under the lock) -----------------------------------------------------------------

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
            next((obj for obj in self.cache.objects(resource, task_id) if _task_kind(obj) == task_kind), None)
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
