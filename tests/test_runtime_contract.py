"""One contract, two runtimes: LocalRuntime (processes on this machine) and KubernetesRuntime (against the
HTTP fake of the Kubernetes API) keep tasks alike, for both kinds, given manifests from the real builders:
create -> get -> list -> AlreadyExists on a second create -> delete -> gone; a second instance (a restarted
API, another replica) sees the same tasks.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.core.manifests import KIND_INFERENCE, KIND_TRAINING
from app.runtime.base import AlreadyExists, Runtime
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import RetryPolicy
from app.runtime.local import LocalRuntime
from tests.fake_kube import FakeKube
from tests.fake_kube.loop import LoopThread
from tests.fake_kube.tasks import inference_task, training_task
from tests.support import kill_workloads, wait_until

# The containers' work does not matter to the contract: a process that just waits to be stopped.
IDLE_COMMAND = ["python", "-c", "import time; time.sleep(60)"]


def idle(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The builders' manifests, with workload containers that only wait (the local runtime runs them)."""
    result = []
    for manifest in manifests:
        if manifest["kind"] in ("Job", "Deployment"):
            pod_spec = manifest["spec"]["template"]["spec"]
            containers = [{**c, "command": IDLE_COMMAND, "args": []} for c in pod_spec["containers"]]
            template = {**manifest["spec"]["template"], "spec": {**pod_spec, "containers": containers}}
            manifest = {**manifest, "spec": {**manifest["spec"], "template": template}}
        result.append(manifest)
    return result


@dataclass
class RuntimeUnderTest:
    loop: LoopThread
    make: Callable[[], Runtime]
    started: list[Runtime] = field(default_factory=list)

    def start(self) -> Runtime:
        """An instance on the same backend (data directory, cluster), as a restarted API would have."""
        runtime = self.make()
        self.loop.run(runtime.start())
        self.started.append(runtime)
        return runtime

    def close(self) -> None:
        for runtime in self.started:
            self.loop.run(runtime.close())


@pytest.fixture(params=["local", "kubernetes"])
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeUnderTest]:
    with LoopThread() as loop:
        if request.param == "local":
            data_dir = tmp_path / "data"
            config = {"MLFLOW_TRACKING_URI": None, "MLFLOW_S3_ENDPOINT_URL": None, "MLOPS_S3_ENDPOINT_URL": None}
            subject = RuntimeUnderTest(loop, lambda: LocalRuntime(data_dir, config, probe_interval=0.1))
            try:
                yield subject
            finally:
                subject.close()
                kill_workloads(data_dir)
        else:
            with FakeKube() as fake:
                subject = RuntimeUnderTest(loop, lambda: KubernetesRuntime(
                    fake.api_client(), fake.namespace, retry=RetryPolicy(first_delay=0.01),
                    watch_retry_delay_seconds=0.05,
                ))
                try:
                    yield subject
                finally:
                    subject.close()


@pytest.fixture
def runtime(under_test: RuntimeUnderTest) -> Runtime:
    return under_test.start()


TASKS = {
    KIND_TRAINING: lambda: training_task("contract-train"),
    KIND_INFERENCE: lambda: inference_task("contract-deploy", "contract-model"),
}


@pytest.mark.parametrize("kind", [KIND_TRAINING, KIND_INFERENCE])
def test_create_get_list_conflict_delete(runtime: Runtime, kind: str) -> None:
    request, manifests = TASKS[kind]()
    task_id = request["taskId"]
    assert runtime.get(kind, task_id) is None and runtime.list(kind) == []

    created = runtime.create(kind, task_id, idle(manifests))
    assert (created.kind, created.task_id, created.request) == (kind, task_id, request)
    assert created.phase in ("Pending", "Running") and created.uid and created.created_at is not None

    read = runtime.get(kind, task_id)
    assert read is not None and (read.uid, read.request, read.created_at) == (created.uid, request, created.created_at)
    assert [(state.task_id, state.uid) for state in runtime.list(kind)] == [(task_id, created.uid)]
    other_kind = KIND_INFERENCE if kind == KIND_TRAINING else KIND_TRAINING
    assert runtime.list(other_kind) == [] and runtime.get(other_kind, task_id) is None

    with pytest.raises(AlreadyExists) as raised:
        runtime.create(kind, task_id, idle(manifests))
    assert (raised.value.existing.uid, raised.value.existing.request) == (created.uid, request)

    assert runtime.delete(kind, task_id) is True
    assert runtime.get(kind, task_id) is None and runtime.list(kind) == []
    assert runtime.delete(kind, task_id) is False


def test_an_inference_task_has_an_endpoint_until_it_is_deleted(runtime: Runtime) -> None:
    request, manifests = inference_task("contract-deploy", "contract-model")
    runtime.create(KIND_INFERENCE, "contract-deploy", idle(manifests))
    endpoint = wait_until(lambda: runtime.endpoints.get("contract-deploy"), 5, 0.02, "the endpoint")
    assert not endpoint.ready and endpoint.profile == request["modelProfile"]
    runtime.delete(KIND_INFERENCE, "contract-deploy")
    wait_until(lambda: runtime.endpoints.get("contract-deploy") is None, 5, 0.02, "the endpoint to go")


def test_a_recreated_task_is_a_new_incarnation(runtime: Runtime) -> None:
    _, manifests = training_task("contract-train")
    first = runtime.create(KIND_TRAINING, "contract-train", idle(manifests))
    runtime.delete(KIND_TRAINING, "contract-train")
    second = runtime.create(KIND_TRAINING, "contract-train", idle(manifests))
    assert second.uid != first.uid


def test_another_instance_sees_every_task(under_test: RuntimeUnderTest, runtime: Runtime) -> None:
    train_request, train_manifests = training_task("contract-train")
    deploy_request, deploy_manifests = inference_task("contract-deploy", "contract-model")
    trained = runtime.create(KIND_TRAINING, "contract-train", idle(train_manifests))
    deployed = runtime.create(KIND_INFERENCE, "contract-deploy", idle(deploy_manifests))

    restarted = under_test.start()
    assert [(s.task_id, s.uid, s.request) for s in restarted.list(KIND_TRAINING)] == [
        ("contract-train", trained.uid, train_request)
    ]
    assert [(s.task_id, s.uid, s.request) for s in restarted.list(KIND_INFERENCE)] == [
        ("contract-deploy", deployed.uid, deploy_request)
    ]
    assert restarted.endpoints.get("contract-deploy") is not None
    assert restarted.delete(KIND_TRAINING, "contract-train") is True
    assert runtime.get(KIND_TRAINING, "contract-train") is None
