"""Calls to the Kubernetes API in one namespace: plain-dict objects in and out, transient failures
retried with backoff, and API errors turned into the control plane's own errors.

Everything here blocks (the official client is synchronous): call it from a worker thread.
"""

import json
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from app.errors import ClusterPermissionDenied, DependencyUnavailable, InvalidSpec, MlopsError, TaskConflict

# Statuses worth another try: throttled, or the API server (or what is in front of it) failing.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# Connection refused or reset, a read that timed out, a response cut short.
TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError)


@dataclass(frozen=True)
class Resource:
    """A namespaced resource: its RBAC name and the official client's methods for it."""

    api_group: str  # "" is the core group, as in RBAC rules
    plural: str
    api: type
    method_suffix: str  # create_<suffix>, read_<suffix>, replace_<suffix>, list_<suffix>, delete_<suffix>

    def __str__(self) -> str:
        return f"{self.plural}.{self.api_group}" if self.api_group else self.plural


JOBS = Resource("batch", "jobs", client.BatchV1Api, "namespaced_job")
DEPLOYMENTS = Resource("apps", "deployments", client.AppsV1Api, "namespaced_deployment")
SERVICES = Resource("", "services", client.CoreV1Api, "namespaced_service")
PODS = Resource("", "pods", client.CoreV1Api, "namespaced_pod")
POD_LOGS = Resource("", "pods/log", client.CoreV1Api, "namespaced_pod_log")
EVENTS = Resource("", "events", client.CoreV1Api, "namespaced_event")
HPAS = Resource("autoscaling", "horizontalpodautoscalers", client.AutoscalingV2Api,
                "namespaced_horizontal_pod_autoscaler")
RESOURCE_OF_KIND = {"Job": JOBS, "Deployment": DEPLOYMENTS, "Service": SERVICES, "HorizontalPodAutoscaler": HPAS}
# A label selector: equality requirements, or the selector's text (e.g. set-based: "key in (a,b)").
Selector = dict[str, str] | str


@dataclass(frozen=True)
class RetryPolicy:
    """A few tries with exponential backoff and jitter; a 429's Retry-After is honoured up to max_delay."""

    attempts: int = 4
    first_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        if retry_after is not None:
            return min(self.max_delay, max(backoff, retry_after))
        return backoff * random.uniform(0.5, 1.0)


def raw_watch() -> watch.Watch:
    """The official watch, yielding events whose objects are plain dicts (as the API sent them):
    `object` as the return type is the client's own way to skip model deserialization."""
    return watch.Watch(return_type="object")


class ObjectExists(Exception):
    """Create answered 409: an object of that name is there already."""


class ObjectGone(Exception):
    """Replace answered 404: the object is not there any more."""


class ObjectChanged(Exception):
    """Replace answered 409: the object changed since its resourceVersion was read."""


class WatchExpired(Exception):
    """The resourceVersion a watch resumed from is gone from the API server's history (410): re-list."""


class LogNotAvailable(Exception):
    """The API has no log for the container yet (it is waiting to start)."""


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or b"{}").get("message") or exc.reason or "")
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason or "")


def _retry_after(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _json(response: Any) -> dict[str, Any]:
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def label_selector(labels: Selector) -> str:
    if isinstance(labels, str):
        return labels
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


class ClusterApi:
    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        retry: RetryPolicy = RetryPolicy(),
        request_timeout_seconds: float = 10.0,
    ):
        self.api_client = api_client
        self.namespace = namespace
        self.retry = retry
        self.request_timeout_seconds = request_timeout_seconds
        self.host = api_client.configuration.host
        self._apis = {api: api(api_client) for api in {r.api for r in RESOURCE_OF_KIND.values()} | {client.CoreV1Api}}

    def _method(self, resource: Resource, action: str) -> Callable[..., Any]:
        return getattr(self._apis[resource.api], f"{action}_{resource.method_suffix}")

    # -- one call, retried and translated ---------------------------------------------------

    def call(
        self,
        verb: str,
        resource: Resource,
        method: Callable[..., Any],
        *args: Any,
        passthrough: tuple[int, ...] = (404, 409),
        **kwargs: Any,
    ) -> Any:
        """Run one API call; statuses in `passthrough` come back as ApiException for the caller to judge."""
        kwargs.setdefault("_request_timeout", self.request_timeout_seconds)
        for attempt in range(1, self.retry.attempts + 1):
            last_try = attempt == self.retry.attempts
            try:
                return method(*args, _preload_content=False, **kwargs)
            except ApiException as exc:
                if exc.status in passthrough:
                    raise
                if exc.status in TRANSIENT_STATUSES and not last_try:
                    time.sleep(self.retry.delay(attempt, _retry_after(exc)))
                    continue
                raise self.translate(verb, resource, exc) from exc
            except TRANSIENT_ERRORS as exc:
                if not last_try:
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise DependencyUnavailable(
                    f"the Kubernetes API at {self.host} cannot be reached ({verb} {resource} in namespace "
                    f"'{self.namespace}'): {type(exc).__name__}: {exc}"[:1000]
                ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def translate(self, verb: str, resource: Resource, exc: ApiException) -> MlopsError:
        message = _api_message(exc)
        where = f"{verb} {resource} in namespace '{self.namespace}'"
        if exc.status == 403:
            return ClusterPermissionDenied(
                f"the Kubernetes API refused to {where}: this API's credentials (in a pod, its ServiceAccount) "
                f"lack the RBAC permission; grant verb '{verb}' on resource '{resource}' in its Role. "
                f"The API said: {message}"
            )
        if exc.status == 401:
            return ClusterPermissionDenied(
                f"the Kubernetes API did not accept this API's credentials (401 Unauthorized) to {where}: {message}"
            )
        if exc.status in (400, 422):
            return InvalidSpec(f"the cluster refused to {where}: {message}")
        if exc.status == 409:
            return TaskConflict(f"conflict on {where}: {message}")
        if exc.status == 0:  # the client's own failure, e.g. TLS
            return DependencyUnavailable(f"the Kubernetes API at {self.host} cannot be used to {where}: {exc.reason}")
        return DependencyUnavailable(f"the Kubernetes API failed to {where} ({exc.status} {exc.reason}): {message}")

    # -- objects --------------------------------------------------------------------------------

    def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return _json(self.call("create", resource, self._method(resource, "create"), self.namespace, body))
        except ApiException as exc:
            if exc.status == 409:
                raise ObjectExists(f"{resource} '{body['metadata']['name']}' exists") from exc
            raise self.translate("create", resource, exc) from exc

    def get(self, resource: Resource, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.call("get", resource, self._method(resource, "read"), name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self.translate("get", resource, exc) from exc

    def replace(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole object. With `metadata.resourceVersion`, only over that version: a change
        made meanwhile is ObjectChanged (409), a deleted object ObjectGone (404)."""
        name = body["metadata"]["name"]
        try:
            return _json(self.call("update", resource, self._method(resource, "replace"), name, self.namespace, body))
        except ApiException as exc:
            if exc.status == 404:
                raise ObjectGone(f"{resource} '{name}' is gone") from exc
            if exc.status == 409:
                raise ObjectChanged(_api_message(exc) or f"{resource} '{name}' changed") from exc
            raise self.translate("update", resource, exc) from exc

    def list(
        self, resource: Resource, labels: Selector | None = None, fields: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Matching objects and the list's resourceVersion (where a watch may start)."""
        kwargs: dict[str, Any] = {}
        if labels:
            kwargs["label_selector"] = label_selector(labels)
        if fields:
            kwargs["field_selector"] = fields
        try:
            listed = _json(self.call("list", resource, self._method(resource, "list"), self.namespace, **kwargs))
        except ApiException as exc:
            raise self.translate("list", resource, exc) from exc
        return listed.get("items") or [], (listed.get("metadata") or {}).get("resourceVersion", "")

    def delete(self, resource: Resource, name: str, uid: str | None = None) -> bool:
        """Delete with its dependents (a Job's pods, a Deployment's ReplicaSets); False if it was not there."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            # Only this incarnation: never a namesake created meanwhile.
            body["preconditions"] = {"uid": uid}
        try:
            _json(self.call("delete", resource, self._method(resource, "delete"), name, self.namespace, body=body))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self.translate("delete", resource, exc) from exc
        return True

    # -- watches and logs -------------------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        labels: Selector | None,
        resource_version: str,
        timeout_seconds: int,
        watcher: watch.Watch,
        fields: str | None = None,
    ) -> Generator[dict[str, Any], None, None]:
        """Raw watch events ({"type", "object"}) from `resource_version` until the server ends the stream.

        Raises WatchExpired on 410; `watcher.stop()` from another thread ends it early.
        """
        # The read timeout outlives the server's own, so only a dead connection trips it.
        request_timeout = (self.request_timeout_seconds, timeout_seconds + self.request_timeout_seconds)
        selectors: dict[str, str] = {}
        if labels:
            selectors["label_selector"] = label_selector(labels)
        if fields:
            selectors["field_selector"] = fields
        stream = watcher.stream(
            self._method(resource, "list"),
            self.namespace,
            **selectors,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=request_timeout,
        )
        try:
            yield from stream
        except ApiException as exc:
            if exc.status == 410:
                raise WatchExpired(str(exc.reason)) from exc
            raise self.translate("watch", resource, exc) from exc

    def read_log(self, pod: str, container: str, tail: int | None) -> str:
        response = self._log_call(pod, container, tail, follow=False)
        try:
            return response.data.decode(errors="replace")
        finally:
            response.release_conn()

    def open_log_stream(self, pod: str, container: str, tail: int | None) -> Any:
        """A streaming urllib3 response of the container's log, open until the container ends."""
        return self._log_call(pod, container, tail, follow=True)

    def _log_call(self, pod: str, container: str, tail: int | None, follow: bool) -> Any:
        kwargs: dict[str, Any] = {"container": container, "follow": follow}
        if tail is not None:
            kwargs["tail_lines"] = tail
        if follow:
            kwargs["_request_timeout"] = (self.request_timeout_seconds, None)
        try:
            return self.call(
                "get", POD_LOGS, self._method(POD_LOGS, "read"), pod, self.namespace, passthrough=(400, 404), **kwargs
            )
        except ApiException as exc:
            # 400: "container ... is waiting to start"; 404: the pod went away meanwhile.
            raise LogNotAvailable(_api_message(exc) or f"no log for pod {pod}") from exc
