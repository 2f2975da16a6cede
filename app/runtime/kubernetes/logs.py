"""A task's container output from the pod logs API: read at once, or followed as it is written.

Before the container starts there is no log; the reader says why instead ("pod not started yet:
<reason>"), and a follower keeps saying so, as the reason changes, until the container starts.
"""

import contextlib
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

from kubernetes import watch

from app.runtime.base import LogGone, WorkloadState
from app.runtime.kubernetes.api import PODS, ClusterApi, LogNotAvailable, WatchExpired, raw_watch
from app.runtime.kubernetes.status import container_started, newest, not_started_reason
from app.schemas.inference import DeploymentStatus
from app.schemas.training import TrainingStatus

CHUNK_BYTES = 64 * 1024
# States after which no pod will start any more.
_ENDED = {TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, DeploymentStatus.FAILED}

TaskState = Callable[[], WorkloadState | None]


def not_started(reason: str) -> str:
    return f"pod not started yet: {reason}\n"


def _container_name(pod: dict[str, Any]) -> str:
    return pod["spec"]["containers"][0]["name"]


def _without_pod(task_state: TaskState) -> tuple[str, bool]:
    """What to say when the task has no pod, and whether one may still come."""
    state = task_state()
    if state is None:
        return "the task no longer exists\n", False
    if state.phase in _ENDED:
        return f"no pod ran: {state.message or state.phase}\n", False
    return not_started(state.message or "waiting for the pod to be created"), True


def read_task_log(api: ClusterApi, labels: dict[str, str], tail: int | None, task_state: TaskState) -> str:
    pods, _ = api.list(PODS, labels)
    pod = newest(pods)
    if pod is None:
        text, may_come = _without_pod(task_state)
        if not may_come:
            raise LogGone(text.strip())
        return text
    if not container_started(pod):
        return not_started(not_started_reason(pod))
    try:
        return api.read_log(pod["metadata"]["name"], _container_name(pod), tail)
    except LogNotAvailable as exc:  # it was deleted, or its container restarts, between the two calls
        return not_started(str(exc))


def _shutdown(response: Any) -> None:
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class LogFollower:
    """Follows one task's log from a worker thread; `cancel()` (from any thread) ends it at once."""

    def __init__(
        self, api: ClusterApi, labels: dict[str, str], tail: int | None, task_state: TaskState, wait_seconds: int = 30
    ):
        self.api = api
        self.labels = labels
        self.tail = tail
        self.task_state = task_state
        self.wait_seconds = wait_seconds
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None
        self._response: Any = None

    def chunks(self) -> Iterator[bytes]:
        pod = yield from self._wait_for_container()
        if pod is None or self._cancelled.is_set():
            return
        try:
            response = self.api.open_log_stream(pod["metadata"]["name"], _container_name(pod), self.tail)
        except LogNotAvailable as exc:
            yield not_started(str(exc)).encode()
            return
        with self._lock:
            self._response = response
        try:
            if self._cancelled.is_set():
                return
            yield from response.stream(CHUNK_BYTES, decode_content=False)
        finally:
            response.release_conn()

    def _wait_for_container(self) -> Generator[bytes, None, dict[str, Any] | None]:
        """Say why there is no log yet, each time the reason changes; return the pod once it started."""
        said = None
        while not self._cancelled.is_set():
            pods, resource_version = self.api.list(PODS, self.labels)
            pod = newest(pods)
            if pod is not None and container_started(pod):
                return pod
            if pod is None:
                reason, may_start = _without_pod(self.task_state)
                if not may_start:
                    yield reason.encode()
                    return None
            else:
                reason = not_started(not_started_reason(pod))
            if reason != said:
                yield reason.encode()
                said = reason
            self._wait_for_pod_change(resource_version)
        return None

    def _wait_for_pod_change(self, resource_version: str) -> None:
        watcher = raw_watch()
        with self._lock:
            if self._cancelled.is_set():
                return
            self._watch = watcher
        events = self.api.watch(PODS, self.labels, resource_version, self.wait_seconds, watcher)
        # Any change to the task's pods ends the wait, as does the server's timeout; an expired
        # resourceVersion only means the caller lists again.
        with contextlib.closing(events), contextlib.suppress(WatchExpired):
            next(events, None)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            watcher, response = self._watch, self._response
        if watcher is not None:
            watcher.stop()
        if response is not None:
            _shutdown(response)
