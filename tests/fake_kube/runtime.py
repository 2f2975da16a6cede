"""A KubernetesRuntime on the fake API, with short retries and waits, and the pytest fixtures the
runtime tests share (registered in tests/conftest.py)."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.runtime.base import WorkloadState
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import RetryPolicy, label_selector
from app.runtime.kubernetes.runtime import CACHED
from app.runtime.permissions import API_PROXY_PERMISSIONS, REQUIRED_PERMISSIONS, allows
from tests.fake_kube.fake import FakeKube
from tests.fake_kube.loop import LoopThread

FAST_RETRY = RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05)


def make_runtime(fake: FakeKube, **overrides: Any) -> KubernetesRuntime:
    options: dict[str, Any] = {
        "retry": FAST_RETRY,
        "watch_retry_delay_seconds": 0.05,
        "endpoint_refresh_seconds": 0.1,
        "log_wait_seconds": 5,
    }
    return KubernetesRuntime(fake.api_client(), fake.namespace, **(options | overrides))


def cache_lag(runtime: KubernetesRuntime, fake: FakeKube) -> list[str]:
    """What the runtime's object cache does not hold yet of what the fake's store holds: an
    object it lacks, one it holds at an older resourceVersion, or one it still holds that is gone."""
    lag = []
    for watched in CACHED:
        plural = watched.resource.plural
        labels = label_selector(watched.labels) if watched.labels else None
        stored, _ = fake.store.list(plural, fake.namespace, labels, watched.fields)
        want = {obj["metadata"]["name"]: obj["metadata"]["resourceVersion"] for obj in stored}
        held = {obj["metadata"]["name"]: obj["metadata"]["resourceVersion"]
                for obj in runtime.cache.objects(watched.resource)}
        lag += [f"{plural}/{name}" for name in want.keys() | held.keys() if want.get(name) != held.get(name)]
    return lag


def caught_up(runtime: KubernetesRuntime, fake: FakeKube, timeout: float = 10) -> None:
    """Wait until the runtime's watches have brought every change made to the fake into its cache,
    as a controller's informer would have a moment later: what a test reads next is current."""
    deadline = time.monotonic() + timeout
    while (lag := cache_lag(runtime, fake)) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not lag, f"the object cache did not catch up with the cluster in {timeout} s: {sorted(lag)[:10]}"


class CaughtUpRuntime:
    """A started runtime whose reads (get, list) wait for its cache to catch up with the fake first,
    so that a test can change the cluster and read the task's state at once. Everything else is the
    runtime's own."""

    def __init__(self, runtime: KubernetesRuntime, fake: FakeKube):
        self._runtime, self._fake = runtime, fake

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def get(self, kind: str, task_id: str, fresh: bool = False) -> WorkloadState | None:
        if self._runtime.cache.synced():
            caught_up(self._runtime, self._fake)
        return self._runtime.get(kind, task_id, fresh)

    def list(self, kind: str) -> list[WorkloadState]:
        if self._runtime.cache.synced():
            caught_up(self._runtime, self._fake)
        return self._runtime.list(kind)


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    """The fake API; afterwards, every call made must be one the platform's Role grants."""
    with FakeKube() as fake:
        yield fake
        undeclared = {
            (call.verb, call.api_group, call.resource)
            for call in fake.calls
            if not allows(REQUIRED_PERMISSIONS + API_PROXY_PERMISSIONS, call.api_group, call.resource, call.verb)
        }
        assert not undeclared, f"the runtime used permissions its Role does not grant: {undeclared}"


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    with LoopThread() as loop:
        yield loop


@pytest.fixture
def runtime(fake: FakeKube, loop: LoopThread) -> Iterator[KubernetesRuntime]:
    runtime = make_runtime(fake)
    loop.run(runtime.start())
    yield CaughtUpRuntime(runtime, fake)
    loop.run(runtime.close())
