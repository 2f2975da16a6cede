"""The runtime seam: what the task services need from wherever workloads run."""

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol


@dataclass
class WorkloadState:
    """A task as the runtime sees it. `phase` is a TrainingStatus or DeploymentStatus value."""

    kind: str
    task_id: str
    request: dict[str, Any]
    phase: str
    message: str | None = None
    created_at: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    # Identity of this incarnation of the task (a re-created task gets a new one).
    uid: str = ""
    # Inference: model-server replicas passing their readiness probe now.
    ready_replicas: int | None = None
    # Inference: the revision history the workload records (app/core/revisions.py), the revision
    # whose model servers answer now, and why the newest one does not yet (it cannot start).
    rollout: dict[str, Any] | None = None
    serving_revision: int | None = None
    revision_problem: str | None = None
    # Inference with a canary: its model servers passing readiness, and why they do not.
    canary_ready_replicas: int | None = None
    canary_problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class AlreadyExists(Exception):
    """A task with this id exists; `existing` is its state, for the idempotency rule."""

    def __init__(self, existing: WorkloadState):
        super().__init__(f"{existing.kind} task '{existing.task_id}' exists")
        self.existing = existing


class LogGone(Exception):
    """The task has ended and the runtime keeps no log of it any more (its pods were removed).
    The message says what the runtime knows instead."""


@dataclass(frozen=True)
class Tls:
    """How to trust an https model server (or the API server in front of it): PEM bytes, as the
    data plane's HTTP client takes them."""

    ca_pem: bytes | None = None  # the CA that signed the server's certificate; None: the system's
    identity_pem: bytes | None = None  # a client certificate and its key, concatenated
    verify: bool = True


@dataclass(frozen=True)
class Endpoint:
    """Where the predict proxy sends a task's requests, and whether it may."""

    task_id: str
    base_url: str
    ready: bool
    profile: str
    message: str | None = None
    # Sent with every forwarded request: e.g. the kubeconfig's bearer token when the route is the
    # Kubernetes API server's service proxy.
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    # TLS for an https base_url (the cluster's CA, a client certificate); None: the system defaults.
    tls: Tls | None = None
    # The deployment's modelId: the name its model server serves the model under (a language
    # model's OpenAI `model`), and a label of its metrics.
    model_id: str | None = None
    # A language model's name on its server (OpenAI's "model"), as the deployment records it; the
    # data plane sends it for the specification's predict route. None for other models.
    served_model_name: str | None = None
    # The revision whose model this server answers with (the answer's X-Mlops-Revision header).
    revision: int | None = None
    # More ready servers of the same revision (the local runtime's replicas): the data plane sends
    # each call to the one of base_url and these with the fewest calls in flight.
    alternates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Canary:
    """A second revision of a deployment taking `weight` percent of its predicts."""

    endpoint: Endpoint
    weight: int


class EndpointCache:
    """Inference endpoints by task id, kept in memory by the runtime: no lookup per predict. A
    task's entry is its stable revision's; a canary, when one runs, is kept beside it."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._canaries: dict[str, Canary] = {}

    def get(self, task_id: str) -> Endpoint | None:
        return self._endpoints.get(task_id)

    def canary(self, task_id: str) -> Canary | None:
        return self._canaries.get(task_id)

    def canary_task_ids(self) -> set[str]:
        return set(self._canaries)

    def put_canary(self, task_id: str, canary: Canary | None) -> None:
        if canary is None:
            self._canaries.pop(task_id, None)
        else:
            self._canaries[task_id] = canary

    def put(self, endpoint: Endpoint) -> None:
        self._endpoints[endpoint.task_id] = endpoint

    def remove(self, task_id: str) -> None:
        self._endpoints.pop(task_id, None)
        self._canaries.pop(task_id, None)

    def mark_unready(self, task_id: str, message: str, base_url: str | None = None) -> None:
        """Take a task's model server out of rotation (the canary's, when `base_url` is its)."""
        canary = self._canaries.get(task_id)
        if canary is not None and base_url is not None and canary.endpoint.base_url == base_url:
            if canary.endpoint.ready:
                self._canaries[task_id] = replace(canary, endpoint=replace(canary.endpoint, ready=False,
                                                                           message=message))
            return
        endpoint = self._endpoints.get(task_id)
        if endpoint is not None and base_url is not None and base_url in endpoint.alternates:
            alternates = tuple(url for url in endpoint.alternates if url != base_url)
            self._endpoints[task_id] = replace(endpoint, alternates=alternates)
        elif endpoint is not None and endpoint.ready:
            self._endpoints[task_id] = replace(endpoint, ready=False, message=message)

    def task_ids(self) -> set[str]:
        return set(self._endpoints)


class Runtime(Protocol):
    """Blocking methods run in a worker thread (see app/core/blocking.py); async ones on the loop."""

    endpoints: EndpointCache
    # Whether a dataset may be a path on the API's own filesystem.
    allows_local_paths: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def unready_reason(self) -> str | None:
        """Why the runtime cannot serve now (e.g. its cluster cannot be reached), for /readyz; None when it can."""
        ...

    def create(self, kind: str, task_id: str, manifests: list[dict[str, Any]]) -> WorkloadState:
        """Make the objects real; raise AlreadyExists if the task id is taken."""
        ...

    def update(self, kind: str, task_id: str, manifests: list[dict[str, Any]], current: WorkloadState) -> WorkloadState:
        """Replace an inference task's objects with `manifests` (same names: a new revision's pod
        template, another replica count), rolled out with no failed request: the new revision's
        model servers become ready before the old ones leave rotation, and the old ones are stopped
        then. Raises TaskNotFound if the task is gone and TaskConflict if it changed since `current`
        was read."""
        ...

    def get(self, kind: str, task_id: str, fresh: bool = False) -> WorkloadState | None:
        """The task's state; a runtime that answers from a cache reads the source itself with
        `fresh` (what an update decides on)."""
        ...

    def list(self, kind: str) -> list[WorkloadState]: ...

    def delete(self, kind: str, task_id: str) -> bool: ...

    def read_logs(self, kind: str, task_id: str, tail: int | None) -> str:
        """The task's container output; raises LogGone for an ended task whose pods are gone."""
        ...

    def follow_logs(self, kind: str, task_id: str, tail: int | None) -> AsyncIterator[bytes]: ...
