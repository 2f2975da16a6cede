"""Canaries and autoscaling on the Kubernetes runtime, against the HTTP fake of the Kubernetes API.

A canary is a second Deployment and Service of the task (task-kind inference-canary, named
canary-<modelId>, owned by the task's Deployment); its weight is in the stable Deployment's rollout
annotation. The endpoint watch keeps the canary beside the stable endpoint in the EndpointCache.
The HorizontalPodAutoscaler is made, replaced and removed with the task, and the Deployment keeps
the replicas it chose. The test plays the controllers (tests/fake_kube).

Every call the runtime makes must be one the platform's Role grants (the `fake` fixture checks it).
"""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.manifests import ANNOTATION_ROLLOUT, KIND_CANARY, KIND_INFERENCE, LABEL_REVISION, LABEL_TASK_KIND
from app.core.revisions import CanaryRecord, Rollout, first_rollout
from app.errors import TaskConflict
from app.runtime.base import Canary, Endpoint, WorkloadState
from app.runtime.kubernetes import KubernetesRuntime
from app.schemas.inference import ServedModel
from tests.fake_kube import FakeKube
from tests.fake_kube import pods as pod_status
from tests.fake_kube.loop import LoopThread
from tests.fake_kube.runtime import make_runtime
from tests.fake_kube.selectors import matches_labels
from tests.fake_kube.tasks import RUN_ID, rollout_task
from tests.support import wait_until
from tests.test_kubernetes_rollout import assert_valid_and_restricted, wrap_get

TASK, MODEL = "deploy-a", "model-a"
NAME, CANARY = "infer-model-a", "canary-model-a"
RUN_B = "b" * 32
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilization": 70}




# -- helpers -------------------------------------------------------------------------------------


def deploy(runtime: KubernetesRuntime, fake: FakeKube) -> Rollout:
    """Revision 1 made and serving."""
    rollout = first_rollout(ServedModel(mlflow_run_id=RUN_ID), 1)
    runtime.create(KIND_INFERENCE, TASK, rollout_task(TASK, MODEL, rollout))
    fake.make_deployment_available(NAME)
    return rollout


def with_canary(rollout: Rollout, weight: int = 20) -> Rollout:
    """Revision 2 (run B) as a canary at `weight` percent beside the stable revision."""
    record = rollout.new_record(ServedModel(mlflow_run_id=RUN_B), "canary")
    canary = CanaryRecord(revision=record.revision, weight=weight, started_at=datetime.now(UTC))
    return rollout.model_copy(update={"history": [*rollout.history, record], "canary": canary})


def state_of(runtime: KubernetesRuntime) -> WorkloadState:
    state = runtime.get(KIND_INFERENCE, TASK)
    assert state is not None
    return state


def update(runtime: KubernetesRuntime, rollout: Rollout) -> WorkloadState:
    return runtime.update(KIND_INFERENCE, TASK, rollout_task(TASK, MODEL, rollout), state_of(runtime))


def obj(fake: FakeKube, resource: str, name: str) -> dict[str, Any]:
    found = fake.get(resource, name)
    assert found is not None, f"no {resource} {name}"
    return found


def canary_of(runtime: KubernetesRuntime) -> Canary | None:
    return runtime.endpoints.canary(TASK)


def canary_ready(runtime: KubernetesRuntime, weight: int | None = None) -> bool:
    canary = canary_of(runtime)
    return canary is not None and canary.endpoint.ready and (weight is None or canary.weight == weight)


def stable(runtime: KubernetesRuntime) -> Endpoint:
    endpoint = runtime.endpoints.get(TASK)
    assert endpoint is not None
    return endpoint


def start_canary(runtime: KubernetesRuntime, fake: FakeKube, weight: int = 20) -> Rollout:
    """Revision 1 serving, revision 2 its canary at `weight`, both ready in the cache."""
    rollout = with_canary(deploy(runtime, fake), weight)
    update(runtime, rollout)
    fake.make_deployment_available(CANARY)
    wait_until(lambda: canary_ready(runtime, weight), 5, 0.02, "the canary to be ready")
    return rollout


def selector_text(service: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in service["spec"]["selector"].items())


# -- the canary's objects -------------------------------------------------------------------------


def test_a_canary_is_a_second_deployment_and_service_the_stable_ones_never_select(
    fake: FakeKube, runtime
) -> None:
    rollout = with_canary(deploy(runtime, fake))
    before = obj(fake, "deployments", NAME)
    mark = fake.mark()
    state = update(runtime, rollout)

    calls = [(c.verb, c.resource, c.name) for c in fake.calls_since(mark)]
    made = [call for call in calls if call[0] in ("create", "update")]
    # The canary's objects first; only then the annotation names the canary.
    assert made == [("create", "deployments", None), ("create", "services", None),
                    ("update", "deployments", NAME)]
    stable_deployment, canary_deployment = obj(fake, "deployments", NAME), obj(fake, "deployments", CANARY)
    stable_service, canary_service = obj(fake, "services", NAME), obj(fake, "services", CANARY)
    # The stable revision's pods are untouched: the spec is the same, the annotation names the canary.
    assert stable_deployment["spec"] == before["spec"]
    assert stable_deployment["metadata"]["generation"] == before["metadata"]["generation"]
    recorded = json.loads(stable_deployment["metadata"]["annotations"][ANNOTATION_ROLLOUT])
    assert recorded["canary"]["revision"] == 2 and recorded["canary"]["weight"] == 20 and recorded["revision"] == 1
    assert ANNOTATION_ROLLOUT not in canary_deployment["metadata"]["annotations"]
    assert canary_deployment["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
    assert canary_deployment["spec"]["replicas"] == 1
    for canary_obj in (canary_deployment, canary_service):
        labels = canary_obj["metadata"]["labels"]
        assert labels[LABEL_TASK_KIND] == KIND_CANARY and labels["mlops.dev/task-id"] == TASK
        assert [ref["uid"] for ref in canary_obj["metadata"]["ownerReferences"]] == [
            stable_deployment["metadata"]["uid"]]
    # Each Service selects only its own revision's pods.
    stable_pods = stable_deployment["spec"]["template"]["metadata"]["labels"]
    canary_pods = canary_deployment["spec"]["template"]["metadata"]["labels"]
    assert matches_labels(selector_text(stable_service), stable_pods)
    assert not matches_labels(selector_text(stable_service), canary_pods)
    assert matches_labels(selector_text(canary_service), canary_pods)
    assert not matches_labels(selector_text(canary_service), stable_pods)
    for made_obj in (stable_deployment, stable_service, canary_deployment, canary_service):
        assert_valid_and_restricted(made_obj)

    # The canary is known at once (the cache changes on the event loop), out of rotation until
    # its model server is ready.
    canary = wait_until(lambda: canary_of(runtime), 5, 0.02, "the canary in the cache")
    assert canary.weight == 20 and not canary.endpoint.ready
    assert canary.endpoint.base_url.endswith(f"/services/{CANARY}:http/proxy")
    assert canary.endpoint.revision == 2 and stable(runtime).revision == 1 and stable(runtime).ready
    assert (state.phase, state.serving_revision, state.canary_ready_replicas) == ("Ready", 1, 0)
    assert state.canary_problem == "waiting for the model server pod to be created"

    fake.make_deployment_available(CANARY)
    wait_until(lambda: canary_ready(runtime, 20), 5, 0.02, "the canary to be ready")
    assert canary_of(runtime).endpoint.model_id == MODEL
    state = state_of(runtime)
    assert (state.canary_ready_replicas, state.canary_problem, state.serving_revision) == (1, None, 1)
    # Still one task: the stable Deployment speaks for it.
    (listed,) = runtime.list(KIND_INFERENCE)
    assert (listed.task_id, listed.uid, listed.canary_ready_replicas) == (TASK, stable_deployment["metadata"]["uid"], 1)
    assert listed.rollout == rollout.as_annotation()


def test_a_weight_change_is_only_the_annotation_and_the_caches_weight(fake: FakeKube, runtime) -> None:
    rollout = start_canary(runtime, fake, 20)
    canary_before = obj(fake, "deployments", CANARY)
    stable_before = obj(fake, "deployments", NAME)
    moved = rollout.model_copy(update={"canary": rollout.canary.model_copy(update={"weight": 50})})
    mark = fake.mark()
    update(runtime, moved)

    calls = [(c.verb, c.resource, c.name) for c in fake.calls_since(mark)]
    assert [call for call in calls if call[0] in ("create", "update", "delete")] == [("update", "deployments", NAME)]
    after = obj(fake, "deployments", NAME)
    assert after["spec"] == stable_before["spec"]
    assert after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert json.loads(after["metadata"]["annotations"][ANNOTATION_ROLLOUT])["canary"]["weight"] == 50
    assert obj(fake, "deployments", CANARY)["metadata"]["resourceVersion"] == canary_before["metadata"][
        "resourceVersion"]
    wait_until(lambda: canary_ready(runtime, 50), 5, 0.02, "the canary's new weight")

    # Another API replica moves the weight: the watch's MODIFIED event of the stable Deployment tells this one.
    def weight_70(deployment: dict[str, Any]) -> None:
        annotation = json.loads(deployment["metadata"]["annotations"][ANNOTATION_ROLLOUT])
        annotation["canary"]["weight"] = 70
        deployment["metadata"]["annotations"][ANNOTATION_ROLLOUT] = json.dumps(annotation)

    fake.update("deployments", NAME, weight_70)
    wait_until(lambda: canary_ready(runtime, 70), 5, 0.02, "the canary's weight to follow the annotation")


def test_an_aborted_canary_leaves_the_annotation_first_then_its_objects_go(fake: FakeKube, runtime) -> None:
    rollout = start_canary(runtime, fake)
    canary_pods = fake.pods_of(CANARY)
    assert canary_pods
    aborted = rollout.model_copy(update={"canary": None})
    mark = fake.mark()
    state = update(runtime, aborted)

    calls = [(c.verb, c.resource, c.name) for c in fake.calls_since(mark)]
    changes = [call for call in calls if call[0] in ("create", "update", "delete")]
    assert changes == [("update", "deployments", NAME), ("delete", "services", CANARY),
                       ("delete", "deployments", CANARY)]
    assert fake.get("deployments", CANARY) is None and fake.get("services", CANARY) is None
    assert not set(canary_pods) & set(fake.names("pods"))  # the canary's pods go with its Deployment
    assert "canary" not in json.loads(obj(fake, "deployments", NAME)["metadata"]["annotations"][ANNOTATION_ROLLOUT])
    wait_until(lambda: canary_of(runtime) is None, 5, 0.02, "the canary to leave the cache")
    assert stable(runtime).ready
    assert (state.canary_ready_replicas, state.canary_problem) == (None, None)


def test_a_promoted_canary_becomes_the_stable_template_and_its_objects_go(fake: FakeKube, runtime) -> None:
    rollout = start_canary(runtime, fake)
    promoted = rollout.model_copy(update={"revision": rollout.canary.revision, "canary": None})
    state = update(runtime, promoted)
    after = obj(fake, "deployments", NAME)
    assert after["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
    assert fake.get("deployments", CANARY) is None and fake.get("services", CANARY) is None
    wait_until(lambda: canary_of(runtime) is None and stable(runtime).revision == 2, 5, 0.02,
               "the canary to leave the cache and the stable endpoint to name revision 2")
    assert (state.phase, state.serving_revision) == ("Ready", 1)  # until the rolling update is done
    fake.roll_out(NAME)
    assert state_of(runtime).serving_revision == 2


def test_a_canary_that_cannot_start_says_why_and_takes_no_traffic(fake: FakeKube, runtime) -> None:
    update(runtime, with_canary(deploy(runtime, fake)))
    pod = fake.add_pod("deployments", CANARY, pod_status.crash_looping(1, "Error", "ValueError: bad weights"))
    fake.sync_deployment(CANARY)
    state = state_of(runtime)
    assert (state.phase, state.serving_revision, state.canary_ready_replicas) == ("Ready", 1, 0)
    assert state.canary_problem is not None
    assert "CrashLoopBackOff" in state.canary_problem and "ValueError: bad weights" in state.canary_problem
    assert state.revision_problem is None  # the stable revision's own pods are fine
    canary = wait_until(lambda: canary_of(runtime), 5, 0.02, "the canary in the cache")
    assert not canary.endpoint.ready and canary.endpoint.message

    fake.set_pod_status(pod, pod_status.running(ready=True))
    fake.sync_deployment(CANARY)
    wait_until(lambda: canary_ready(runtime), 5, 0.02, "the canary to be ready")
    state = state_of(runtime)
    assert (state.canary_ready_replicas, state.canary_problem) == (1, None)

    fake.delete("deployments", CANARY)  # someone removed it behind the API's back
    state = state_of(runtime)
    assert (state.canary_ready_replicas, state.canary_problem) == (0, "the canary's Deployment is missing")


def test_a_canary_marked_unready_is_restored_and_a_restart_keeps_it_with_its_weight(
    fake: FakeKube, runtime, loop: LoopThread
) -> None:
    start_canary(runtime, fake, 30)
    canary_url = canary_of(runtime).endpoint.base_url

    async def mark_unready() -> None:
        runtime.endpoints.mark_unready(TASK, "model server unreachable", base_url=canary_url)

    loop.run(mark_unready())
    assert not canary_of(runtime).endpoint.ready and stable(runtime).ready
    wait_until(lambda: canary_ready(runtime, 30), 5, 0.02, "the canary to be restored")

    restarted = make_runtime(fake)
    loop.run(restarted.start())
    try:
        canary = wait_until(lambda: restarted.endpoints.canary(TASK), 5, 0.02, "the canary after a restart")
        assert (canary.weight, canary.endpoint.ready, canary.endpoint.revision) == (30, True, 2)
        assert canary.endpoint.base_url == canary_url
        assert restarted.endpoints.get(TASK).revision == 1
        state = restarted.get(KIND_INFERENCE, TASK)
        assert state is not None and state.rollout["canary"]["weight"] == 30 and state.canary_ready_replicas == 1
    finally:
        loop.run(restarted.close())


def test_a_refused_canary_makes_nothing(fake: FakeKube, runtime) -> None:
    rollout = with_canary(deploy(runtime, fake))
    current = state_of(runtime)
    # Another replica scales the Deployment between this update's read and its replace: the
    # canary's objects, made first, are removed again.
    wrap_get(runtime, lambda: fake.update("deployments", NAME, lambda d: d["spec"].update(replicas=3)))
    with pytest.raises(TaskConflict, match="changed meanwhile"):
        runtime.update(KIND_INFERENCE, TASK, rollout_task(TASK, MODEL, rollout), current)
    assert fake.names("deployments") == [NAME] and fake.names("services") == [NAME]
    assert "canary" not in json.loads(obj(fake, "deployments", NAME)["metadata"]["annotations"][ANNOTATION_ROLLOUT])
    assert canary_of(runtime) is None

    # A canary name held by an object this task did not make is a conflict naming it; nothing changes.
    squatter = rollout_task("other-task", MODEL, rollout)[3]
    fake.create("services", squatter)
    before = obj(fake, "deployments", NAME)
    with pytest.raises(TaskConflict, match=f"a Service named '{CANARY}' already exists .* task 'other-task'"):
        update(runtime, rollout)
    assert fake.names("deployments") == [NAME] and obj(fake, "deployments", NAME) == before
    assert canary_of(runtime) is None


# -- the autoscaler -------------------------------------------------------------------------------


def autoscaled(rollout: Rollout, **settings: Any) -> Rollout:
    values = {**AUTOSCALING, **settings}
    return rollout.model_copy(update={"autoscaling": values, "replicas": values["minReplicas"]})


def test_the_autoscaler_is_made_replaced_and_removed_and_its_replicas_are_kept(fake: FakeKube, runtime) -> None:
    rollout = autoscaled(deploy(runtime, fake))
    update(runtime, rollout)
    hpa = obj(fake, "horizontalpodautoscalers", NAME)
    deployment = obj(fake, "deployments", NAME)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]
    assert deployment["spec"]["replicas"] == 2  # at least its minimum from the start
    assert_valid_and_restricted(hpa)

    fake.update("deployments", NAME, lambda d: d["spec"].update(replicas=4))  # the autoscaler scales out
    rollout = rollout.with_revision(ServedModel(mlflow_run_id=RUN_B), "updated")
    mark = fake.mark()
    update(runtime, rollout)
    assert obj(fake, "deployments", NAME)["spec"]["replicas"] == 4
    calls = [(c.verb, c.resource) for c in fake.calls_since(mark)]
    assert ("update", "horizontalpodautoscalers") not in calls  # nothing to change on it

    rollout = autoscaled(rollout, maxReplicas=3)
    update(runtime, rollout)
    replaced = obj(fake, "horizontalpodautoscalers", NAME)
    assert replaced["metadata"]["uid"] == hpa["metadata"]["uid"] and replaced["spec"]["maxReplicas"] == 3
    assert obj(fake, "deployments", NAME)["spec"]["replicas"] == 3  # within the new bounds
    assert_valid_and_restricted(replaced)

    fixed = rollout.model_copy(update={"autoscaling": None, "replicas": 2})
    mark = fake.mark()
    update(runtime, fixed)
    assert fake.get("horizontalpodautoscalers", NAME) is None
    assert obj(fake, "deployments", NAME)["spec"]["replicas"] == 2
    calls = [(c.verb, c.resource) for c in fake.calls_since(mark) if c.verb in ("update", "delete")]
    assert calls == [("update", "deployments"), ("delete", "horizontalpodautoscalers")]


def test_a_task_made_with_a_canary_and_an_autoscaler_is_one_task_and_delete_removes_everything(
    fake: FakeKube, runtime
) -> None:
    rollout = autoscaled(with_canary(first_rollout(ServedModel(mlflow_run_id=RUN_ID), 2), 25))
    created = runtime.create(KIND_INFERENCE, TASK, rollout_task(TASK, MODEL, rollout))
    stable_uid = obj(fake, "deployments", NAME)["metadata"]["uid"]
    for resource, name in (("services", NAME), ("deployments", CANARY), ("services", CANARY),
                           ("horizontalpodautoscalers", NAME)):
        assert obj(fake, resource, name)["metadata"]["ownerReferences"][0]["uid"] == stable_uid
    assert created.uid == stable_uid and created.rollout["canary"]["weight"] == 25
    fake.make_deployment_available(NAME)
    fake.make_deployment_available(CANARY)
    wait_until(lambda: canary_ready(runtime, 25), 5, 0.02, "the canary to be ready")
    (listed,) = runtime.list(KIND_INFERENCE)
    assert (listed.task_id, listed.uid, listed.canary_ready_replicas) == (TASK, stable_uid, 1)
    state = state_of(runtime)
    assert (state.uid, state.serving_revision, state.canary_ready_replicas) == (stable_uid, 1, 1)

    assert runtime.delete(KIND_INFERENCE, TASK) is True
    for resource in ("deployments", "services", "horizontalpodautoscalers", "pods"):
        assert fake.names(resource) == [], resource
    # The cache is changed on the event loop, and the watch's DELETED events may come after.
    wait_until(lambda: runtime.endpoints.get(TASK) is None and canary_of(runtime) is None, 5, 0.02,
               "the endpoint and its canary to leave the cache")
    assert runtime.get(KIND_INFERENCE, TASK) is None and runtime.list(KIND_INFERENCE) == []
