"""A KubernetesRuntime on the fake API, with short retries and waits, and the pytest fixtures the
runtime tests share (registered in tests/conftest.py)."""

from collections.abc import Iterator
from typing import Any

import pytest

from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import RetryPolicy
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
    yield runtime
    loop.run(runtime.close())
