"""Rolling updates on the Kubernetes runtime, against the HTTP fake of the Kubernetes API: update()
replaces the inference Deployment over the version it read, and the status tells which revision
serves and why the newest one cannot start while the test plays the Deployment controller and the
kubelet (tests/fake_kube: add_revision_pod, set_pod_status, roll_out ...).

Every call the runtime makes must be one the platform's Role grants (the `fake` fixture checks it).
"""

import json
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from app.core.manifests import (
    ANNOTATION_ROLLOUT,
    KIND_INFERENCE,
    LABEL_REVISION,
    MIN_READY_SECONDS,
    PRESTOP_SLEEP_SECONDS,
)
from app.core.revisions import Rollout, first_rollout, revision_states
from app.errors import TaskConflict, TaskNotFound
from app.runtime.base import WorkloadState
from app.runtime.kubernetes import KubernetesRuntime
from app.schemas.inference import RevisionState, ServedModel
from models.spec import SERVE_SPEC_ENV, ServeSpec
from tests.fake_kube import FakeKube
from tests.fake_kube import pods as pod_status
from tests.fake_kube.loop import LoopThread
from tests.fake_kube.runtime import make_runtime
from tests.fake_kube.tasks import RUN_ID, inference_task

TASK, MODEL, NAME = "deploy-a", "model-a", "infer-model-a"
RUN_B = "b" * 32
KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35")




def deploy(runtime: KubernetesRuntime, fake: FakeKube) -> Rollout:
    """Revision 1 made and serving (one ready pod, the Deployment available)."""
    rollout = first_rollout(ServedModel(mlflow_run_id=RUN_ID), 1)
    runtime.create(KIND_INFERENCE, TASK, inference_task(TASK, MODEL, rollout=rollout)[1])
    fake.make_deployment_available(NAME)
    return rollout


def state_of(runtime: KubernetesRuntime) -> WorkloadState:
    state = runtime.get(KIND_INFERENCE, TASK)
    assert state is not None
    return state


def update(runtime: KubernetesRuntime, rollout: Rollout, current: WorkloadState | None = None) -> WorkloadState:
    manifests = inference_task(TASK, MODEL, rollout=rollout)[1]
    return runtime.update(KIND_INFERENCE, TASK, manifests, current or state_of(runtime))


def to_run_b(rollout: Rollout) -> Rollout:
    return rollout.with_revision(ServedModel(mlflow_run_id=RUN_B), "updated")


def deployment(fake: FakeKube) -> dict[str, Any]:
    obj = fake.get("deployments", NAME)
    assert obj is not None
    return obj


def served_run(obj: dict[str, Any]) -> str:
    env = {item["name"]: item.get("value") for item in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
    uri = ServeSpec.model_validate_json(env[SERVE_SPEC_ENV]).model_uri
    assert uri is not None
    return uri


def template_revision(obj: dict[str, Any]) -> str:
    return obj["spec"]["template"]["metadata"]["labels"][LABEL_REVISION]


def states_by_revision(state: WorkloadState) -> dict[int, tuple[RevisionState, str | None]]:
    rollout = Rollout.model_validate(state.rollout)
    return {r.revision: (r.state, r.message) for r in revision_states(state, rollout)}


def assert_valid_and_restricted(obj: dict[str, Any]) -> None:
    """Strictly valid for every supported Kubernetes version; a pod template meets Pod Security "restricted"."""
    as_sent = {key: value for key, value in obj.items() if key != "status"}
    as_sent["metadata"] = {k: v for k, v in obj["metadata"].items()
                           if k not in ("uid", "resourceVersion", "generation", "creationTimestamp", "namespace")}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(as_sent, version, strict=True)
    if obj["kind"] != "Deployment":
        return
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


# -- the replace ----------------------------------------------------------------------------------


def test_an_update_replaces_the_deployments_pod_template_in_place(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    before = deployment(fake)
    # What the cluster keeps on the object besides the manifest: the Deployment controller's annotation.
    fake.update("deployments", NAME, lambda d: d["metadata"]["annotations"].update(
        {"deployment.kubernetes.io/revision": "1"}))
    service_before = fake.get("services", NAME)
    current = state_of(runtime)
    assert (current.serving_revision, current.revision_problem) == (1, None)
    assert current.rollout == rollout.as_annotation()

    mark = fake.mark()
    updated = update(runtime, to_run_b(rollout), current)

    calls = [(c.verb, c.resource) for c in fake.calls_since(mark)]
    assert ("update", "deployments") in calls and ("update", "services") not in calls
    assert not {verb for verb, _ in calls} & {"create", "delete"}
    after = deployment(fake)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert template_revision(after) == "2" and served_run(after) == f"runs:/{RUN_B}/model"
    recorded = json.loads(after["metadata"]["annotations"][ANNOTATION_ROLLOUT])
    assert recorded["revision"] == 2 and [r["model"]["mlflowRunId"] for r in recorded["history"]] == [RUN_ID, RUN_B]
    # A new pod ready before an old one goes, and the old one drained after it left the endpoints.
    spec = after["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["minReadySeconds"] == MIN_READY_SECONDS > 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_SLEEP_SECONDS
    assert container["readinessProbe"]["httpGet"]["path"]
    startup = container["startupProbe"]
    assert spec["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]
    # The Service did not need a change: it is untouched and still owned by the Deployment.
    service = fake.get("services", NAME)
    assert service == service_before
    assert service["metadata"]["ownerReferences"][0]["uid"] == after["metadata"]["uid"]
    for obj in (after, service):
        assert_valid_and_restricted(obj)
    # The old revision serves until the new one is ready.
    assert (updated.phase, updated.serving_revision, updated.revision_problem) == ("Ready", 1, None)
    assert updated.rollout == recorded
    assert runtime.endpoints.get(TASK).ready


def test_the_status_follows_the_rollout_and_a_rollback(fake: FakeKube, runtime) -> None:
    rollout = to_run_b(deploy(runtime, fake))
    update(runtime, rollout)
    (old_pod,) = fake.pods_of_revision(NAME, 1)

    new_pod = fake.add_revision_pod(NAME)  # the surge pod: its model is loading
    state = state_of(runtime)
    assert (state.phase, state.serving_revision, state.revision_problem) == ("Ready", 1, None)
    assert states_by_revision(state) == {2: (RevisionState.STARTING, None), 1: (RevisionState.SERVING, None)}

    fake.set_pod_status(new_pod, pod_status.crash_looping(1, "Error", "ValueError: the model file is corrupt"))
    fake.sync_deployment(NAME)
    state = state_of(runtime)
    assert (state.phase, state.serving_revision) == ("Ready", 1)
    assert state.revision_problem is not None
    assert "CrashLoopBackOff" in state.revision_problem
    assert "ValueError: the model file is corrupt" in state.revision_problem
    assert states_by_revision(state)[2] == (RevisionState.FAILED, state.revision_problem)
    assert runtime.endpoints.get(TASK).ready  # predicts still go to revision 1
    assert fake.pods_of_revision(NAME, 1) == [old_pod]

    fake.set_pod_status(new_pod, pod_status.running(ready=True))
    fake.sync_deployment(NAME)
    state = state_of(runtime)  # both ready for a moment: the newest one serves
    assert (state.serving_revision, state.revision_problem) == (2, None)
    assert fake.roll_out(NAME) == [new_pod] and fake.pods_of(NAME) == [new_pod]
    mark = fake.mark()
    state = state_of(runtime)
    assert (state.phase, state.serving_revision, state.revision_problem) == ("Ready", 2, None)
    assert states_by_revision(state) == {2: (RevisionState.SERVING, None), 1: (RevisionState.RETIRED, None)}
    # A finished rollout needs no look at the pods.
    assert ("list", "pods") not in [(c.verb, c.resource) for c in fake.calls_since(mark)]

    # A rollback is one more revision, serving revision 1's model, rolled the same way.
    back = rollout.with_revision(rollout.history[0].model, "rolled back to 1")
    state = update(runtime, back)
    assert (state.serving_revision, state.rollout["revision"]) == (2, 3)
    assert template_revision(deployment(fake)) == "3" and served_run(deployment(fake)) == f"runs:/{RUN_ID}/model"
    fake.roll_out(NAME)
    state = state_of(runtime)
    assert (state.serving_revision, state.revision_problem) == (3, None)
    assert [r["cause"] for r in state.rollout["history"]] == ["created", "updated", "rolled back to 1"]


@pytest.mark.parametrize(("status", "told"), [
    (pod_status.terminated(1, "Error", "RuntimeError: no such model"),
     "container server exited with code 1: RuntimeError: no such model"),
    (pod_status.waiting("ImagePullBackOff", 'Back-off pulling image "registry/server:bad"'),
     'ImagePullBackOff: Back-off pulling image "registry/server:bad"'),
    (pod_status.unschedulable("0/1 nodes are available: 1 Insufficient memory."),
     "pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient memory."),
])
def test_a_revision_that_cannot_start_says_why_while_the_old_one_serves(
    fake: FakeKube, runtime, status: dict[str, Any], told: str
) -> None:
    update(runtime, to_run_b(deploy(runtime, fake)))
    fake.add_revision_pod(NAME, status)
    state = state_of(runtime)
    assert (state.phase, state.serving_revision, state.revision_problem) == ("Ready", 1, told)


def test_a_surge_pod_the_quota_refuses_is_the_revisions_problem(fake: FakeKube, runtime) -> None:
    update(runtime, to_run_b(deploy(runtime, fake)))
    fake.update("deployments", NAME, lambda d: d["status"].update(conditions=[
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": 'pods "infer-model-a-x" is forbidden: exceeded quota: compute, requested: cpu=1'}]))
    state = state_of(runtime)
    assert (state.phase, state.serving_revision) == ("Ready", 1)
    assert state.revision_problem == ('FailedCreate: pods "infer-model-a-x" is forbidden: exceeded quota: compute, '
                                      "requested: cpu=1")


def test_replicas_change_the_spec_not_the_revision(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    state = update(runtime, rollout.model_copy(update={"replicas": 3}))
    after = deployment(fake)
    assert after["spec"]["replicas"] == 3 and template_revision(after) == "1"
    assert after["metadata"]["generation"] == 2
    assert (state.phase, state.serving_revision, state.rollout["replicas"]) == ("Ready", 1, 3)
    assert len(fake.roll_out(NAME)) == 3
    state = state_of(runtime)
    assert (state.ready_replicas, state.serving_revision) == (3, 1)


def test_a_deployment_made_before_revisions_serves_revision_1_and_can_be_updated(fake: FakeKube, runtime) -> None:
    runtime.create(KIND_INFERENCE, TASK, inference_task(TASK, MODEL)[1])
    fake.make_deployment_available(NAME)
    state = state_of(runtime)
    assert state.rollout is None and state.serving_revision == 1
    update(runtime, to_run_b(first_rollout(ServedModel(mlflow_run_id=RUN_ID), 1)), state)
    fake.add_revision_pod(NAME)
    assert state_of(runtime).serving_revision == 1  # its unlabelled pod is revision 1
    fake.roll_out(NAME)
    assert state_of(runtime).serving_revision == 2


def test_revisions_are_read_back_by_a_restarted_api(fake: FakeKube, runtime, loop: LoopThread) -> None:
    rollout = to_run_b(deploy(runtime, fake))
    update(runtime, rollout)
    fake.roll_out(NAME)
    restarted = make_runtime(fake)
    loop.run(restarted.start())
    try:
        state = restarted.get(KIND_INFERENCE, TASK)
        assert state is not None and Rollout.model_validate(state.rollout) == rollout
        assert state.serving_revision == 2
        (listed,) = restarted.list(KIND_INFERENCE)
        assert listed.rollout == rollout.as_annotation() and listed.serving_revision == 2
    finally:
        loop.run(restarted.close())


# -- what changed meanwhile ----------------------------------------------------------------------


def test_a_spec_or_revision_changed_since_the_read_is_a_conflict_and_changes_nothing(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    current = state_of(runtime)
    fake.update("deployments", NAME, lambda d: d["spec"].update(replicas=2))  # kubectl scale meanwhile
    with pytest.raises(TaskConflict, match=r"changed meanwhile.*read it again and retry"):
        update(runtime, to_run_b(rollout), current)
    assert template_revision(deployment(fake)) == "1" and deployment(fake)["spec"]["replicas"] == 2

    current = state_of(runtime)
    other = to_run_b(rollout)  # another API replica's update wins the race
    update(runtime, other, current)
    with pytest.raises(TaskConflict, match="changed meanwhile"):
        update(runtime, rollout.model_copy(update={"replicas": 4}), current)
    assert deployment(fake)["spec"]["replicas"] == 1 and template_revision(deployment(fake)) == "2"


def test_the_controllers_status_updates_are_no_conflict(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    current = state_of(runtime)
    fake.add_revision_pod(NAME)  # the controller writes the Deployment's status meanwhile
    update(runtime, to_run_b(rollout), current)
    assert template_revision(deployment(fake)) == "2"


def wrap_get(runtime: KubernetesRuntime, then: Callable[[], None]) -> None:
    """Run `then` right after the runtime's next read of the Deployment: between its GET and its PUT."""
    read = runtime.api.get

    def get(resource: Any, name: str) -> dict[str, Any] | None:
        obj = read(resource, name)
        if resource.plural == "deployments":
            runtime.api.get = read  # type: ignore[method-assign]
            then()
        return obj

    runtime.api.get = get  # type: ignore[method-assign]


def test_a_change_between_read_and_replace_is_the_servers_409(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    current = state_of(runtime)
    wrap_get(runtime, lambda: fake.update("deployments", NAME, lambda d: d["spec"].update(replicas=5)))
    mark = fake.mark()
    with pytest.raises(TaskConflict, match="changed meanwhile"):
        update(runtime, to_run_b(rollout), current)
    assert ("update", "deployments") in [(c.verb, c.resource) for c in fake.calls_since(mark)]
    assert template_revision(deployment(fake)) == "1" and deployment(fake)["spec"]["replicas"] == 5


def test_a_deployment_gone_or_made_again_is_not_updated(fake: FakeKube, runtime) -> None:
    rollout = deploy(runtime, fake)
    current = state_of(runtime)
    wrap_get(runtime, lambda: fake.delete("deployments", NAME))
    with pytest.raises(TaskNotFound, match="gone"):
        update(runtime, to_run_b(rollout), current)
    with pytest.raises(TaskNotFound, match="gone"):
        update(runtime, to_run_b(rollout), current)
    assert fake.get("deployments", NAME) is None

    deploy(runtime, fake)  # the same task made again: another incarnation
    with pytest.raises(TaskConflict, match="changed meanwhile"):
        update(runtime, to_run_b(rollout), current)


def test_a_service_that_lacks_what_the_manifest_records_is_replaced_keeping_its_cluster_ip(
    fake: FakeKube, runtime
) -> None:
    rollout = deploy(runtime, fake)
    before = fake.get("services", NAME)
    manifests = inference_task(TASK, MODEL, rollout=to_run_b(rollout))[1]
    manifests[1]["metadata"]["annotations"]["mlops.dev/note"] = "recorded"
    runtime.update(KIND_INFERENCE, TASK, manifests, state_of(runtime))
    after = fake.get("services", NAME)
    assert after["metadata"]["annotations"]["mlops.dev/note"] == "recorded"
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
    assert after["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert_valid_and_restricted(after)


# -- the fake's PUT, as a real API server answers it -----------------------------------------------


def test_the_fakes_replace_checks_versions_and_immutable_fields_like_the_api_server(fake: FakeKube) -> None:
    manifests = inference_task(TASK, MODEL)[1]
    made = fake.create("deployments", manifests[0])
    apps = client.AppsV1Api(fake.api_client())
    body = {**manifests[0], "metadata": {**manifests[0]["metadata"], "resourceVersion": made["metadata"][
        "resourceVersion"]}}
    body["spec"] = {**body["spec"], "replicas": 2}
    replaced = apps.replace_namespaced_deployment(NAME, fake.namespace, body, _preload_content=False)
    replaced = json.loads(replaced.data)
    assert replaced["metadata"]["generation"] == 2 and replaced["metadata"]["uid"] == made["metadata"]["uid"]
    assert fake.store.history[-1].type == "MODIFIED"

    with pytest.raises(ApiException) as stale:
        apps.replace_namespaced_deployment(NAME, fake.namespace, body)
    assert stale.value.status == 409
    status = json.loads(stale.value.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Conflict", 409)
    assert status["details"] == {"name": NAME, "group": "apps", "kind": "deployments"}
    assert status["message"] == (f'Operation cannot be fulfilled on deployments.apps "{NAME}": the object has been '
                                 "modified; please apply your changes to the latest version and try again")

    current = fake.get("deployments", NAME)
    moved = {**current, "spec": {**current["spec"], "selector": {"matchLabels": {"app": "other"}}}}
    with pytest.raises(ApiException) as immutable:
        apps.replace_namespaced_deployment(NAME, fake.namespace, moved)
    assert immutable.value.status == 422 and "field is immutable" in json.loads(immutable.value.body)["message"]
    status_only = {**current, "status": {"replicas": 9}}
    unchanged = json.loads(apps.replace_namespaced_deployment(NAME, fake.namespace, status_only,
                                                              _preload_content=False).data)
    assert unchanged["metadata"]["generation"] == 2 and unchanged["status"] == current["status"]
