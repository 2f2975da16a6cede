"""KubernetesRuntime against the HTTP fake of the Kubernetes API (tests/fake_kube): the real client's
requests, label selectors, the watch-fed endpoint cache, pod logs, status reasons, faults and RBAC.

After every test, every call the runtime made must be one the platform's Role grants
(app/runtime/permissions.py).
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.config import incluster_config

from app.core.manifests import KIND_INFERENCE, KIND_TRAINING, LABEL_MANAGED_BY, LABEL_TASK_ID, MANAGED_BY
from app.errors import ClusterPermissionDenied, DependencyUnavailable, InvalidSpec, TaskConflict
from app.runtime.base import AlreadyExists
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes import connection as cluster_connection
from app.runtime.kubernetes.routes import ApiServerProxyRoute, ServiceDnsRoute
from app.runtime.kubernetes.runtime import CACHED
from app.settings import Settings
from tests.dataplane_support import Plane
from tests.fake_kube import FakeKube
from tests.fake_kube import pods as pod_status
from tests.fake_kube.loop import LoopThread
from tests.fake_kube.runtime import FAST_RETRY, make_runtime
from tests.fake_kube.tasks import inference_task, training_task
from tests.fake_kube.tls import make_tls_files
from tests.support import free_port, wait_until

CACHED_RESOURCES = {watched.resource.plural for watched in CACHED}


def deploy(runtime: KubernetesRuntime, task_id: str = "deploy-a", model_id: str = "model-a") -> dict[str, Any]:
    request, manifests = inference_task(task_id, model_id)
    runtime.create(KIND_INFERENCE, task_id, manifests)
    return request


def phase_and_message(runtime: KubernetesRuntime, kind: str, task_id: str) -> tuple[str, str | None]:
    state = runtime.get(kind, task_id)
    assert state is not None
    return state.phase, state.message


# -- objects, labels, selectors -------------------------------------------------------------------


def test_training_task_is_a_job_read_back_from_its_labels_and_annotation(fake: FakeKube, runtime) -> None:
    request, manifests = training_task("train-a")
    created = runtime.create(KIND_TRAINING, "train-a", manifests)

    job = fake.get("jobs", "train-train-a")
    assert job is not None and job["metadata"]["labels"][LABEL_TASK_ID] == "train-a"
    assert created.uid == job["metadata"]["uid"] and created.request == request
    assert created.created_at is not None and created.phase == "Pending"
    # Somebody else's Job in the namespace is none of the API's business.
    fake.create("jobs", {**manifests[0], "metadata": {"name": "train-foreign", "labels": {"app": "other"}}})
    assert [state.task_id for state in runtime.list(KIND_TRAINING)] == ["train-a"]
    assert runtime.get(KIND_TRAINING, "foreign") is None
    assert runtime.delete(KIND_TRAINING, "foreign") is False
    assert fake.get("jobs", "train-foreign") is not None
    read = runtime.get(KIND_TRAINING, "train-a")
    assert read is not None and (read.uid, read.request) == (created.uid, request)


def test_inference_task_is_a_deployment_then_a_service_owned_by_it(fake: FakeKube, runtime) -> None:
    mark = fake.mark()
    request = deploy(runtime, "deploy-a", "model-a")

    creates = [call.resource for call in fake.calls_since(mark) if call.verb == "create"]
    assert creates == ["deployments", "services"]
    deployment, service = fake.get("deployments", "infer-model-a"), fake.get("services", "infer-model-a")
    assert deployment is not None and service is not None
    assert service["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
    listed = runtime.list(KIND_INFERENCE)
    assert [(state.task_id, state.request) for state in listed] == [("deploy-a", request)]
    assert runtime.list(KIND_TRAINING) == []


def test_delete_takes_the_jobs_pods_and_the_deployments_service_and_pods(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.start_job("train-train-a")
    deploy(runtime)
    fake.make_deployment_available("infer-model-a")
    assert len(fake.names("pods")) == 2

    assert runtime.delete(KIND_TRAINING, "train-a") is True
    assert runtime.delete(KIND_INFERENCE, "deploy-a") is True

    assert (fake.names("jobs"), fake.names("deployments"), fake.names("services"), fake.names("pods")) == (
        [], [], [], []
    )
    # Without a propagationPolicy, batch/v1 would have orphaned the Job's pods.
    assert {policy for _, _, policy in fake.deletions} == {"Background"}
    assert runtime.get(KIND_TRAINING, "train-a") is None and runtime.get(KIND_INFERENCE, "deploy-a") is None
    assert runtime.delete(KIND_TRAINING, "train-a") is False and runtime.delete(KIND_INFERENCE, "deploy-a") is False


def test_a_restarted_api_or_second_replica_sees_every_task(fake: FakeKube, runtime, loop: LoopThread) -> None:
    train = runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    request = deploy(runtime)
    fake.make_deployment_available("infer-model-a")

    replica = make_runtime(fake)
    loop.run(replica.start())
    try:
        (seen,) = replica.list(KIND_TRAINING)
        assert (seen.task_id, seen.uid) == ("train-a", train.uid)
        assert [state.request for state in replica.list(KIND_INFERENCE)] == [request]
        endpoint = replica.endpoints.get("deploy-a")
        assert endpoint is not None and endpoint.ready
    finally:
        loop.run(replica.close())


# -- status: why a task is where it is ----------------------------------------------------------------


def test_training_goes_pending_running_succeeded_with_times(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    assert phase_and_message(runtime, KIND_TRAINING, "train-a") == (
        "Pending", "waiting for the Job controller to create the trainer pod"
    )
    fake.start_job("train-train-a")
    assert phase_and_message(runtime, KIND_TRAINING, "train-a") == ("Running", None)
    fake.complete_job("train-train-a")
    state = runtime.get(KIND_TRAINING, "train-a")
    assert state is not None and (state.phase, state.message) == ("Succeeded", None)
    assert state.start_time is not None and state.completion_time is not None
    assert state.created_at is not None and state.created_at < state.start_time < state.completion_time


def test_failed_job_tells_the_trainers_termination_message(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.start_job("train-train-a")
    fake.fail_job("train-train-a", termination_message="TrainingError: target column 'no_such_column' not found")
    state = runtime.get(KIND_TRAINING, "train-a")
    assert state is not None and state.phase == "Failed"
    assert state.message == (
        "BackoffLimitExceeded: trainer exited with code 1: TrainingError: target column 'no_such_column' not found"
    )
    assert state.completion_time is not None


def test_deadline_exceeded_and_oom_killed_jobs_say_so(fake: FakeKube, runtime) -> None:
    for task_id in ("slow", "greedy"):
        runtime.create(KIND_TRAINING, task_id, training_task(task_id)[1])
        fake.start_job(f"train-{task_id}")
    fake.fail_job("train-slow", reason="DeadlineExceeded", message="Job was active longer than specified deadline",
                  exit_code=143, container_reason="Error")
    fake.fail_job("train-greedy", exit_code=137, container_reason="OOMKilled")

    phase, message = phase_and_message(runtime, KIND_TRAINING, "slow")
    assert phase == "Failed" and message is not None and message.startswith("DeadlineExceeded: ")
    assert phase_and_message(runtime, KIND_TRAINING, "greedy") == (
        "Failed", "BackoffLimitExceeded: trainer was OOMKilled: it used more memory than its limit (4Gi)"
    )


def test_unschedulable_pod_tells_why_from_its_condition_or_event(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "gpu-job", training_task("gpu-job", useGpu=True)[1])
    pod = fake.add_pod("jobs", "train-gpu-job", pod_status.unschedulable(
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available."))
    assert phase_and_message(runtime, KIND_TRAINING, "gpu-job") == (
        "Pending",
        "pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
        "preemption: 0/1 nodes are available.",
    )
    # A pod the scheduler has not written a condition on yet: its FailedScheduling event tells.
    fake.set_pod_status(pod, {"phase": "Pending"})
    fake.add_event(fake.get("pods", pod), "FailedScheduling", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    assert phase_and_message(runtime, KIND_TRAINING, "gpu-job") == (
        "Pending", "FailedScheduling: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )


def test_job_whose_pod_cannot_be_created_tells_the_controllers_event(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "quota", training_task("quota")[1])
    fake.add_event(fake.get("jobs", "train-quota"), "FailedCreate",
                   'pods "train-quota-x" is forbidden: exceeded quota: gpu-quota')
    assert phase_and_message(runtime, KIND_TRAINING, "quota") == (
        "Pending", 'FailedCreate: pods "train-quota-x" is forbidden: exceeded quota: gpu-quota'
    )


def test_image_pull_backoff_keeps_training_pending_and_fails_inference(fake: FakeKube, runtime) -> None:
    image_error = 'Back-off pulling image "localhost:5002/mlflow-trainer:typo"'
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.add_pod("jobs", "train-train-a", pod_status.waiting("ImagePullBackOff", image_error))
    assert phase_and_message(runtime, KIND_TRAINING, "train-a") == ("Pending", f"ImagePullBackOff: {image_error}")

    deploy(runtime)
    fake.add_pod("deployments", "infer-model-a", pod_status.waiting("ErrImagePull", "manifest unknown"))
    assert phase_and_message(runtime, KIND_INFERENCE, "deploy-a") == ("Failed", "ErrImagePull: manifest unknown")


def test_a_missing_config_map_is_told_as_the_container_config_error(fake: FakeKube, runtime) -> None:
    missing = 'couldn\'t find key MLFLOW_TRACKING_URI in ConfigMap mlops-test/mlops-config'
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.add_pod("jobs", "train-train-a", pod_status.waiting("CreateContainerConfigError", missing))
    assert phase_and_message(runtime, KIND_TRAINING, "train-a") == (
        "Pending", f"CreateContainerConfigError: {missing}"
    )
    deploy(runtime)
    fake.add_pod("deployments", "infer-model-a", pod_status.waiting("CreateContainerConfigError", missing))
    assert phase_and_message(runtime, KIND_INFERENCE, "deploy-a") == (
        "Failed", f"CreateContainerConfigError: {missing}"
    )


def test_inference_phases_pending_ready_crash_loop_and_progress_deadline(fake: FakeKube, runtime) -> None:
    deploy(runtime, "starting", "model-s")
    fake.add_pod("deployments", "infer-model-s", pod_status.running(ready=False))
    assert phase_and_message(runtime, KIND_INFERENCE, "starting") == (
        "Pending", "model server is starting (not ready yet: loading the model)"
    )
    fake.make_deployment_available("infer-model-s")
    assert phase_and_message(runtime, KIND_INFERENCE, "starting") == ("Ready", None)

    deploy(runtime, "oom", "model-o")
    fake.add_pod("deployments", "infer-model-o", pod_status.crash_looping(137, "OOMKilled"))
    assert phase_and_message(runtime, KIND_INFERENCE, "oom") == (
        "Failed",
        "CrashLoopBackOff: container server keeps exiting; it was OOMKilled: it used more memory than its limit (2Gi)",
    )
    deploy(runtime, "stuck", "model-x")
    fake.set_deployment_conditions("infer-model-x", {
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "infer-model-x-5d8f" has timed out progressing.'})
    assert phase_and_message(runtime, KIND_INFERENCE, "stuck") == (
        "Failed", 'ProgressDeadlineExceeded: ReplicaSet "infer-model-x-5d8f" has timed out progressing.'
    )


# -- logs ------------------------------------------------------------------------------------------


def test_logs_say_why_there_are_none_yet_then_tail_the_pod(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    assert runtime.read_logs(KIND_TRAINING, "train-a", None) == (
        "pod not started yet: waiting for the Job controller to create the trainer pod\n"
    )
    pod = fake.add_pod("jobs", "train-train-a", pod_status.waiting("ImagePullBackOff", "Back-off pulling image"))
    assert runtime.read_logs(KIND_TRAINING, "train-a", None) == (
        "pod not started yet: ImagePullBackOff: Back-off pulling image\n"
    )
    fake.set_pod_status(pod, pod_status.running())
    fake.write_log(pod, "".join(f'{{"epoch": {n}}}\n' for n in range(1, 6)))
    assert runtime.read_logs(KIND_TRAINING, "train-a", 2) == '{"epoch": 4}\n{"epoch": 5}\n'
    assert runtime.read_logs(KIND_TRAINING, "train-a", None).count("epoch") == 5


def test_inference_logs_come_from_the_newest_model_server_pod(fake: FakeKube, runtime) -> None:
    deploy(runtime)
    crashed = fake.add_pod("deployments", "infer-model-a", pod_status.crash_looping(1, message="no such run"))
    fake.write_log(crashed, "loading model\nMlflowException: no such run\n")
    assert runtime.read_logs(KIND_INFERENCE, "deploy-a", 1) == "MlflowException: no such run\n"
    replacement = fake.add_pod("deployments", "infer-model-a", pod_status.running())
    fake.write_log(replacement, "model loaded\n")
    assert runtime.read_logs(KIND_INFERENCE, "deploy-a", None) == "model loaded\n"


def test_follow_waits_for_the_pod_then_streams_until_the_container_ends(
    fake: FakeKube, runtime, loop: LoopThread
) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    chunks: list[bytes] = []

    async def follow() -> None:
        async for chunk in runtime.follow_logs(KIND_TRAINING, "train-a", None):
            chunks.append(chunk)

    following = asyncio.run_coroutine_threadsafe(follow(), loop.loop)
    wait_until(lambda: chunks, 5, 0.02, "the not-started message")
    assert chunks[0] == b"pod not started yet: waiting for the Job controller to create the trainer pod\n"
    pod = fake.add_pod("jobs", "train-train-a", pod_status.waiting("ContainerCreating"))
    wait_until(lambda: len(chunks) == 2, 5, 0.02, "the reason to change")
    assert chunks[1] == b"pod not started yet: ContainerCreating\n"
    fake.set_pod_status(pod, pod_status.running())
    for epoch in range(1, 4):
        fake.write_log(pod, f"epoch {epoch}\n")
        wait_until(lambda e=epoch: f"epoch {e}".encode() in b"".join(chunks), 5, 0.02, f"epoch {epoch} to arrive")
    fake.write_log(pod, "done\n")
    fake.complete_job("train-train-a")
    following.result(timeout=5)  # the stream ends with the container
    assert b"".join(chunks[2:]) == b"epoch 1\nepoch 2\nepoch 3\ndone\n"


def test_a_reader_that_leaves_ends_the_follow_at_once(fake: FakeKube, runtime, loop: LoopThread) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    pod = fake.start_job("train-train-a")
    fake.write_log(pod, "first line\n")

    async def first_chunk_then_leave() -> bytes:
        stream = runtime.follow_logs(KIND_TRAINING, "train-a", None)
        chunk = await anext(stream)
        await stream.aclose()
        return chunk

    started = time.monotonic()
    assert loop.run(first_chunk_then_leave(), timeout=5) == b"first line\n"
    assert time.monotonic() - started < 2


# -- the watch-fed endpoint cache ---------------------------------------------------------------------


def endpoint_ready(runtime: KubernetesRuntime, task_id: str) -> bool:
    endpoint = runtime.endpoints.get(task_id)
    return endpoint is not None and endpoint.ready


def test_endpoint_cache_follows_the_cluster_without_a_call_per_lookup(fake: FakeKube, runtime) -> None:
    deploy(runtime)
    # The Deployment's and the Service's events arrive one by one; the endpoint settles on both.
    endpoint = wait_until(lambda: (e := runtime.endpoints.get("deploy-a")) and "pod" in (e.message or "") and e, 5,
                          0.02, "the endpoint to appear")
    assert not endpoint.ready
    assert endpoint.message == "waiting for the model server pod to be created"
    assert endpoint.base_url == f"{fake.url}/api/v1/namespaces/{fake.namespace}/services/infer-model-a:http/proxy"

    fake.make_deployment_available("infer-model-a")
    wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to be ready")
    mark = fake.mark()
    for _ in range(100):
        assert runtime.endpoints.get("deploy-a") is not None
    assert [call for call in fake.calls_since(mark) if call.verb != "watch"] == []
    # kubectl delete deployment: its Service goes with it (owner reference), and so does the endpoint.
    fake.delete("deployments", "infer-model-a")
    assert fake.names("services") == []
    wait_until(lambda: runtime.endpoints.get("deploy-a") is None, 5, 0.02, "the endpoint to go")


def test_another_replicas_deployment_appears_through_the_watch(fake: FakeKube, runtime) -> None:
    _, manifests = inference_task("elsewhere", "model-e")
    for manifest in manifests:  # as another API replica creates them
        fake.create(manifest["kind"].lower() + "s", manifest)
    fake.make_deployment_available("infer-model-e")
    wait_until(lambda: endpoint_ready(runtime, "elsewhere"), 5, 0.02, "the other replica's endpoint")


def test_dropped_watch_is_relisted_and_catches_up(fake: FakeKube, runtime) -> None:
    deploy(runtime)
    mark = fake.mark()
    fake.drop_watches()
    fake.make_deployment_available("infer-model-a")  # while the streams are broken
    wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to be ready")
    wait_until(lambda: {call.resource for call in fake.calls_since(mark) if call.verb == "list"} == CACHED_RESOURCES,
               5, 0.02, "every resource to be re-listed")
    # And the new streams carry what follows.
    fake.delete("services", "infer-model-a")
    wait_until(lambda: not endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to lose its Service")
    assert runtime.endpoints.get("deploy-a").message == "the model's Service is missing"


def test_ended_watch_resumes_from_its_resource_version_without_relisting(fake: FakeKube, runtime) -> None:
    deploy(runtime)
    mark = fake.mark()
    fake.hold_watches()
    fake.end_watches()  # as the server's timeoutSeconds does
    wait_until(lambda: any(c.verb == "watch" and c.resource == "deployments" for c in fake.calls_since(mark)), 5,
               0.02, "the watch to ask to resume")
    fake.make_deployment_available("infer-model-a")  # happens while no stream is open
    fake.release_watches()
    wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the replayed event")
    assert [call.verb for call in fake.calls_since(mark) if call.resource == "deployments"] == ["watch"]


def test_expired_resource_version_410_relists(fake: FakeKube, runtime) -> None:
    deploy(runtime, "old", "model-old")
    fake.make_deployment_available("infer-model-old")
    wait_until(lambda: endpoint_ready(runtime, "old"), 5, 0.02, "the first endpoint")
    fake.hold_watches()
    fake.end_watches()
    mark = fake.mark()
    wait_until(lambda: {c.resource for c in fake.calls_since(mark) if c.verb == "watch"} == CACHED_RESOURCES, 5,
               0.02, "every watch to ask to resume")
    # Meanwhile another replica deletes one model and deploys another, and etcd compacts the history.
    fake.delete("deployments", "infer-model-old")
    _, manifests = inference_task("new", "model-new")
    for manifest in manifests:
        fake.create(manifest["kind"].lower() + "s", manifest)
    fake.make_deployment_available("infer-model-new")
    fake.compact()
    fake.release_watches()

    wait_until(lambda: endpoint_ready(runtime, "new") and runtime.endpoints.get("old") is None, 5, 0.02,
               "the re-listed state")
    wait_until(lambda: {call.resource for call in fake.calls_since(mark) if call.verb == "list"} == CACHED_RESOURCES,
               5, 0.02, "every resource to be re-listed")


def test_an_endpoint_the_proxy_marked_unready_is_restored_while_the_cluster_says_ready(
    fake: FakeKube, runtime, loop: LoopThread
) -> None:
    deploy(runtime)
    fake.make_deployment_available("infer-model-a")
    wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to be ready")

    async def mark_unready() -> None:
        runtime.endpoints.mark_unready("deploy-a", "model server unreachable: ClientConnectorError")

    loop.run(mark_unready())
    assert not endpoint_ready(runtime, "deploy-a")
    wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to be restored")


# -- faults ------------------------------------------------------------------------------------------


def test_throttling_server_errors_and_resets_are_retried(fake: FakeKube, runtime) -> None:
    fake.fail_next("create", "jobs", 500, times=1)
    fake.reset_next("create", "jobs", times=1)
    fake.fail_next("list", "pods", 429, times=1, retry_after=0)
    mark = fake.mark()
    created = runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    state = runtime.get(KIND_TRAINING, "train-a", fresh=True)
    assert state is not None and state.uid == created.uid
    verbs = [(call.verb, call.resource) for call in fake.calls_since(mark)]
    assert verbs.count(("create", "jobs")) == 3 and verbs.count(("list", "pods")) == 2
    assert fake.names("jobs") == ["train-train-a"]


def test_retries_are_bounded_then_the_cluster_is_unavailable(fake: FakeKube, runtime) -> None:
    fake.fail_next("get", "jobs", 503, times=100)
    mark = fake.mark()
    with pytest.raises(DependencyUnavailable, match="503"):
        runtime.get(KIND_TRAINING, "train-a", fresh=True)
    gets = [call for call in fake.calls_since(mark) if (call.verb, call.resource) == ("get", "jobs")]
    assert len(gets) == FAST_RETRY.attempts


def test_an_unreachable_api_is_dependency_unavailable() -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"
    unreachable = KubernetesRuntime(client.ApiClient(configuration), "mlops", retry=FAST_RETRY)
    with pytest.raises(DependencyUnavailable, match="cannot be reached"):
        unreachable.list(KIND_TRAINING)


def test_existing_task_is_already_exists_with_its_state(fake: FakeKube, runtime) -> None:
    request, manifests = training_task("train-a")
    fake.create("jobs", manifests[0])  # another replica won the race
    with pytest.raises(AlreadyExists) as raised:
        runtime.create(KIND_TRAINING, "train-a", manifests)
    assert raised.value.existing.uid == fake.get("jobs", "train-train-a")["metadata"]["uid"]
    assert raised.value.existing.request == request

    deploy(runtime)
    with pytest.raises(AlreadyExists) as raised:
        deploy(runtime)
    assert raised.value.existing.task_id == "deploy-a"


def test_a_name_held_by_another_task_is_a_conflict(fake: FakeKube, runtime) -> None:
    deploy(runtime, "first", "shared-model")
    with pytest.raises(TaskConflict, match="belongs to task 'first'"):
        deploy(runtime, "second", "shared-model")
    assert runtime.get(KIND_INFERENCE, "second") is None


def test_injected_404_means_gone_not_an_error(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.fail_next("delete", "jobs", 404)  # another replica deleted it first
    assert runtime.delete(KIND_TRAINING, "train-a") is False
    fake.fail_next("get", "jobs", 404)
    assert runtime.get(KIND_TRAINING, "train-a", fresh=True) is None


def test_forbidden_is_cluster_permission_denied_naming_verb_resource_and_namespace(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    fake.fail_next("list", "pods", 403, message='pods is forbidden: User "system:serviceaccount:mlops:api" '
                                                'cannot list resource "pods" in API group "" in the namespace')
    with pytest.raises(ClusterPermissionDenied) as raised:
        runtime.get(KIND_TRAINING, "train-a", fresh=True)
    message = raised.value.message
    assert "list pods in namespace 'mlops-test'" in message and "RBAC" in message
    assert "verb 'list' on resource 'pods'" in message and "cannot list resource" in message
    fake.fail_next("create", "jobs", 403)
    with pytest.raises(ClusterPermissionDenied, match=r"create jobs\.batch"):
        runtime.create(KIND_TRAINING, "train-b", training_task("train-b")[1])


def test_a_deployment_whose_service_cannot_be_made_is_removed(fake: FakeKube, runtime) -> None:
    fake.fail_next("create", "services", 422, message="spec.ports[0].targetPort: Invalid value")
    with pytest.raises(InvalidSpec, match="targetPort"):
        deploy(runtime)
    fake.fail_next("create", "services", 500, times=FAST_RETRY.attempts)
    with pytest.raises(DependencyUnavailable):
        deploy(runtime)
    assert fake.names("deployments") == [] and fake.names("services") == []
    assert runtime.get(KIND_INFERENCE, "deploy-a") is None


def test_a_service_left_by_an_earlier_attempt_of_the_same_task_is_adopted(fake: FakeKube, runtime) -> None:
    _, manifests = inference_task("deploy-a", "model-a")
    fake.create("services", manifests[1])  # made by an earlier try whose Deployment was then removed
    runtime.create(KIND_INFERENCE, "deploy-a", manifests)
    assert fake.names("deployments") == ["infer-model-a"] and fake.names("services") == ["infer-model-a"]


# -- configuration and the predict route --------------------------------------------------------------


class _ModelServer(BaseHTTPRequestHandler):
    """Stands behind a Service: answers /predict with what it was sent."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"predictions": [len(json.loads(body)["data"]["features"])]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def test_predict_through_the_api_server_carries_the_kubeconfigs_token_and_client_certificate(
    tmp_path: Path, loop: LoopThread, model_server: tuple[str, int]
) -> None:
    with FakeKube(token="developer-token", tls=make_tls_files(tmp_path)) as fake:
        runtime = make_runtime(fake)
        loop.run(runtime.start())
        try:
            deploy(runtime)
            fake.make_deployment_available("infer-model-a")
            fake.set_backend("infer-model-a", *model_server)
            wait_until(lambda: endpoint_ready(runtime, "deploy-a"), 5, 0.02, "the endpoint to be ready")
            endpoint = runtime.endpoints.get("deploy-a")
            assert endpoint.base_url.startswith("https://") and endpoint.tls is not None
            assert endpoint.tls.ca_pem and endpoint.tls.identity_pem  # the cluster CA, the client certificate
            assert endpoint.headers == {"authorization": "Bearer developer-token"}

            async def predict() -> httpx.Response:
                plane = Plane()
                plane.endpoints.put(endpoint)
                try:
                    return await plane.predict("deploy-a", b'{"data": {"features": [[1], [2]]}}')
                finally:
                    await plane.close()

            response = loop.run(predict())
            assert (response.status_code, response.json()) == (200, {"predictions": [2]})
            assert [c.resource for c in fake.calls if c.verb == "create"][-1] == "services/proxy"
        finally:
            loop.run(runtime.close())


def write_kubeconfig(path: Path, fake: FakeKube, namespace: str | None) -> Path:
    context: dict[str, Any] = {"cluster": "fake", "user": "developer"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "developer", "user": {"token": "developer-token"}}],
        "contexts": [{"name": "fake", "context": context}, {"name": "other", "context": {**context,
                                                                                       "namespace": "other-ns"}}],
    }))
    return path


def test_outside_a_cluster_the_kubeconfig_context_gives_credentials_namespace_and_api_proxy(tmp_path: Path) -> None:
    with FakeKube(namespace="team-a", token="developer-token") as fake:
        kubeconfig = write_kubeconfig(tmp_path / "config", fake, "team-a")
        runtime = KubernetesRuntime.from_settings(Settings(runtime="kubernetes", kubeconfig=kubeconfig))
        assert runtime.namespace == "team-a" and isinstance(runtime.route, ApiServerProxyRoute)
        assert runtime.list(KIND_TRAINING) == []  # the token was accepted
        assert runtime.route.target("infer-m").headers == {"authorization": "Bearer developer-token"}

        assert KubernetesRuntime.from_settings(Settings(kubeconfig=kubeconfig, kube_context="other")).namespace == (
            "other-ns"
        )
        assert KubernetesRuntime.from_settings(Settings(kubeconfig=kubeconfig, namespace="chosen")).namespace == (
            "chosen"
        )
        unset = write_kubeconfig(tmp_path / "plain", fake, None)
        assert KubernetesRuntime.from_settings(Settings(kubeconfig=unset)).namespace == "default"
        dns = KubernetesRuntime.from_settings(Settings(kubeconfig=kubeconfig, predict_route="service-dns"))
        assert dns.route.target("infer-m").base_url == "http://infer-m.team-a.svc:80"
    with pytest.raises(DependencyUnavailable, match="no Kubernetes configuration"):
        KubernetesRuntime.from_settings(Settings(kubeconfig=tmp_path / "missing"))


def test_in_a_pod_the_service_account_and_pod_namespace_are_used_and_predicts_go_by_dns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = make_tls_files(tmp_path)
    token, namespace = tmp_path / "token", tmp_path / "namespace"
    token.write_text("service-account-token")
    namespace.write_text("ml-prod")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.43.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tls.ca))
    monkeypatch.setattr(cluster_connection, "SERVICEACCOUNT_NAMESPACE_FILE", namespace)

    runtime = KubernetesRuntime.from_settings(Settings(runtime="kubernetes"))
    assert runtime.namespace == "ml-prod" and isinstance(runtime.route, ServiceDnsRoute)
    assert runtime.api.host == "https://10.43.0.1:443"
    assert runtime.route.target("infer-m").base_url == "http://infer-m.ml-prod.svc:80"
    assert KubernetesRuntime.from_settings(Settings(namespace="override")).namespace == "override"
    assert isinstance(KubernetesRuntime.from_settings(Settings(predict_route="api-proxy")).route, ApiServerProxyRoute)


def test_every_object_the_runtime_makes_is_labelled_as_managed_by_the_api(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_TRAINING, "train-a", training_task("train-a")[1])
    deploy(runtime)
    made = [*fake.list("jobs"), *fake.list("deployments"), *fake.list("services")]
    assert len(made) == 3
    assert all(obj["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY for obj in made)
