"""PATCH, revisions and rollback through the API on the Kubernetes runtime (the HTTP fake of the
Kubernetes API; the test plays the Deployment controller and the kubelet). The runs deployed are
finished runs of the real MLflow server the other API tests use; no model server runs here."""

import uuid

from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from app.core.manifests import LABEL_REVISION
from app.runtime.permissions import API_PROXY_PERMISSIONS, REQUIRED_PERMISSIONS, allows
from tests.fake_kube import FakeKube
from tests.fake_kube import pods as pod_status
from tests.fake_kube.runtime import caught_up
from tests.test_api_on_kubernetes import ADMIN, kubernetes_app
from tests.test_kubernetes_rollout import assert_valid_and_restricted, served_run

NAME = "infer-house-rollout"
DEPLOYMENT = "/api/v1/inference/deployments/rollout"


def finished_runs(mlflow_uri: str, count: int) -> list[str]:
    tracking = MlflowClient(mlflow_uri)
    experiment = tracking.create_experiment(f"k8s-rollout-{uuid.uuid4().hex[:8]}")
    runs = []
    for _ in range(count):
        run = tracking.create_run(experiment).info.run_id
        tracking.set_terminated(run)
        runs.append(run)
    return runs


def revision_label(fake: FakeKube) -> str:
    deployment = fake.get("deployments", NAME)
    assert deployment is not None
    return deployment["spec"]["template"]["metadata"]["labels"][LABEL_REVISION]


def revisions(client: TestClient) -> list[tuple[int, str, str | None]]:
    answer = client.get(f"{DEPLOYMENT}/revisions")
    assert answer.status_code == 200, answer.text
    return [(item["revision"], item["state"], item["model"].get("mlflowRunId")) for item in answer.json()["items"]]


def test_update_status_restart_rollback_and_scale_through_the_api(mlflow_uri: str) -> None:
    run_a, run_b = finished_runs(mlflow_uri, 2)
    with FakeKube(token="cluster-token") as fake:
        app, runtime = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            created = client.post("/api/v1/inference/deployments", json={
                "taskId": "rollout", "modelId": "house-rollout", "mlflowRunId": run_a,
                "modelProfile": "tabular_regression"})
            assert created.status_code == 201, created.text
            fake.make_deployment_available(NAME)
            caught_up(runtime, fake)
            assert client.get(DEPLOYMENT).json()["servingRevision"] == 1

            # A dry run shows the new revision's objects and changes nothing.
            mark = fake.mark()
            dry = client.patch(DEPLOYMENT, params={"dryRun": "true"}, json={"mlflowRunId": run_b})
            assert dry.status_code == 200, dry.text
            planned = dry.json()["manifests"][0]
            assert planned["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
            assert served_run(planned) == f"runs:/{run_b}/model"
            assert revision_label(fake) == "1"
            assert not [c for c in fake.calls_since(mark) if c.verb in ("create", "update", "delete")]

            updated = client.patch(DEPLOYMENT, json={"mlflowRunId": run_b})
            assert updated.status_code == 202, updated.text
            task = updated.json()
            assert (task["revision"], task["servingRevision"], task["status"]) == (2, 1, "Ready")
            assert task["model"]["mlflowRunId"] == run_b
            deployment = fake.get("deployments", NAME)
            assert revision_label(fake) == "2" and served_run(deployment) == f"runs:/{run_b}/model"
            for obj in (deployment, fake.get("services", NAME)):
                assert_valid_and_restricted(obj)

            # The new model cannot load: revision 1 keeps serving and the status says why.
            pod = fake.add_revision_pod(NAME, pod_status.crash_looping(1, "Error", "ValueError: cannot load model"))
            caught_up(runtime, fake)
            status = client.get(DEPLOYMENT).json()
            assert (status["status"], status["servingRevision"], status["revision"]) == ("Ready", 1, 2)
            assert status["message"].startswith("revision 2 cannot start: CrashLoopBackOff")
            assert "ValueError: cannot load model" in status["message"]
            assert status["message"].endswith("; revision 1 serves")
            assert revisions(client) == [(2, "Failed", run_b), (1, "Serving", run_a)]

            fake.set_pod_status(pod, pod_status.running(ready=True))
            fake.roll_out(NAME)
            caught_up(runtime, fake)
            status = client.get(DEPLOYMENT).json()
            assert (status["servingRevision"], status["revision"], status["status"]) == (2, 2, "Ready")

        # A restarted API reads the revisions back from the cluster.
        app, runtime = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            assert revisions(client) == [(2, "Serving", run_b), (1, "Retired", run_a)]

            rolled = client.post(f"{DEPLOYMENT}/rollback")
            assert rolled.status_code == 202, rolled.text
            assert (rolled.json()["revision"], rolled.json()["servingRevision"]) == (3, 2)
            assert revision_label(fake) == "3" and served_run(fake.get("deployments", NAME)) == f"runs:/{run_a}/model"
            fake.roll_out(NAME)
            caught_up(runtime, fake)
            assert revisions(client) == [(3, "Serving", run_a), (2, "Retired", run_b), (1, "Retired", run_a)]

            scaled = client.patch(DEPLOYMENT, json={"replicas": 2})
            assert scaled.status_code == 202, scaled.text
            assert (scaled.json()["replicas"], scaled.json()["revision"]) == (2, 3)
            assert fake.get("deployments", NAME)["spec"]["replicas"] == 2 and revision_label(fake) == "3"
            assert len(fake.roll_out(NAME)) == 2
            caught_up(runtime, fake)
            assert client.get(DEPLOYMENT).json()["readyReplicas"] == 2

            assert client.patch("/api/v1/inference/deployments/nothing-here", json={"replicas": 2}).status_code == 404

        undeclared = {(c.verb, c.resource) for c in fake.calls
                      if not allows(REQUIRED_PERMISSIONS + API_PROXY_PERMISSIONS, c.api_group, c.resource, c.verb)}
        assert not undeclared
