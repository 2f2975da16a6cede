"""Canaries, their automatic abort, and the autoscaler through the API's routes on the Kubernetes
runtime (the HTTP fake of the Kubernetes API). The test plays the controllers and the kubelet: each
Deployment's container (the stable one's and the canary's) runs here as a real model server loading
its revision's model from a real MLflow, and the fake's services proxy forwards to it.

One API, fake and MLflow for the whole story, so that it stays quick: deploy, a canary at 20%,
reweighted, kept over an API restart, promoted; a canary aborted by the control plane; autoscaling.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.core.manifests import KIND_CANARY, LABEL_REVISION, LABEL_TASK_KIND
from app.runtime.permissions import API_PROXY_PERMISSIONS, REQUIRED_PERMISSIONS, allows
from app.settings import PROJECT_ROOT
from models.spec import TRAIN_SPEC_ENV, TrainSpec
from tests.fake_kube import FakeKube
from tests.support import regression_csv, wait_until
from tests.test_api_on_kubernetes import ADMIN, PREDICT_BODY, kubernetes_app, start_model_server
from tests.test_kubernetes_rollout import assert_valid_and_restricted, served_run

TASK, MODEL = "canary-k8s", "house-canary"
NAME, CANARY = f"infer-{MODEL}", f"canary-{MODEL}"
DEPLOYMENT = f"/api/v1/inference/deployments/{TASK}"
PREDICT = f"/api/v1/inference/{TASK}/predict"
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 4, "targetCpuUtilization": 60}


def train_runs(tmp: Path, mlflow_uri: str) -> tuple[str, str]:
    """Two finished runs with a model each (different data, so different models), trained at once."""
    started = []
    for seed in (21, 22):
        csv = regression_csv(tmp / f"canary-{seed}.csv", rows=80, seed=seed)
        spec = TrainSpec(task_id=f"canary-train-{seed}", experiment_name="k8s-canary",
                         model_profile="tabular_regression", handler="torch_mlp_regressor", dataset_path=str(csv),
                         hyperparameters={"numEpoch": 2, "learningRate": 0.01, "numBatch": 32, "hiddenUnits": 8,
                                          "hiddenLayers": 1, "validationFraction": 0.2, "seed": seed})
        env = {**os.environ, TRAIN_SPEC_ENV: spec.model_dump_json(), "MLFLOW_TRACKING_URI": mlflow_uri}
        started.append(subprocess.Popen([sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs = []
    for process in started:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        runs.append(next(json.loads(line) for line in out.splitlines() if '"run started"' in line)["runId"])
    return runs[0], runs[1]


def obj(fake: FakeKube, resource: str, name: str) -> dict[str, Any]:
    found = fake.get(resource, name)
    assert found is not None, f"no {resource} {name}"
    return found


def changes_since(fake: FakeKube, mark: int) -> list[tuple[str, str, str | None]]:
    return [(c.verb, c.resource, c.name) for c in fake.calls_since(mark) if c.verb in ("create", "update", "delete")]


def revisions(client: TestClient) -> list[tuple[int, str]]:
    answer = client.get(f"{DEPLOYMENT}/revisions")
    assert answer.status_code == 200, answer.text
    return [(item["revision"], item["state"]) for item in answer.json()["items"]]


def served_by(client: TestClient, calls: int) -> dict[str, int]:
    """How many of `calls` predicts each revision answered (X-Mlops-Revision); every one is a 200."""
    counts: dict[str, int] = {}
    for _ in range(calls):
        answer = client.post(PREDICT, json=PREDICT_BODY)
        assert answer.status_code == 200, answer.text
        revision = answer.headers["x-mlops-revision"]
        counts[revision] = counts.get(revision, 0) + 1
    return counts


def canary_ready(client: TestClient) -> bool:
    canary = client.get(DEPLOYMENT).json()["canary"]
    return canary is not None and canary["readyReplicas"] == 1


def test_canary_reweight_restart_promote_abort_and_autoscale_through_the_api(
    mlflow_uri: str, tmp_path: Path, model_servers: list[subprocess.Popen[bytes]]
) -> None:
    run_a, run_b = train_runs(tmp_path, mlflow_uri)
    with FakeKube(token="cluster-token") as fake:
        app, _ = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            created = client.post("/api/v1/inference/deployments", json={
                "taskId": TASK, "modelId": MODEL, "mlflowRunId": run_a, "modelProfile": "tabular_regression"})
            assert created.status_code == 201, created.text
            port_a = start_model_server(obj(fake, "deployments", NAME), mlflow_uri, model_servers)
            fake.set_backend(NAME, "127.0.0.1", port_a)
            fake.make_deployment_available(NAME)
            wait_until(lambda: client.post(PREDICT, json=PREDICT_BODY).status_code == 200, 10, 0.05,
                       "the stable revision to answer")
            stable_before = obj(fake, "deployments", NAME)

            # -- 1. a canary at 20%: its own Deployment and Service, strictly valid ------------------
            mark = fake.mark()
            dry = client.post(f"{DEPLOYMENT}/canary", params={"dryRun": "true"},
                              json={"mlflowRunId": run_b, "trafficPercent": 20})
            assert dry.status_code == 200, dry.text
            planned = {(m["kind"], m["metadata"]["name"]) for m in dry.json()["manifests"]}
            assert {("Deployment", CANARY), ("Service", CANARY)} <= planned
            assert changes_since(fake, mark) == [] and fake.get("deployments", CANARY) is None
            assert client.get(DEPLOYMENT).json()["canary"] is None

            started = client.post(f"{DEPLOYMENT}/canary", json={"mlflowRunId": run_b, "trafficPercent": 20})
            assert started.status_code == 202, started.text
            assert (started.json()["canary"]["revision"], started.json()["canary"]["weight"]) == (2, 20)
            canary_deployment, canary_service = obj(fake, "deployments", CANARY), obj(fake, "services", CANARY)
            assert served_run(canary_deployment) == f"runs:/{run_b}/model"
            assert canary_deployment["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
            for made in (canary_deployment, canary_service):
                assert made["metadata"]["labels"][LABEL_TASK_KIND] == KIND_CANARY
            assert obj(fake, "deployments", NAME)["spec"] == stable_before["spec"]  # the stable pods stay
            for made in (obj(fake, "deployments", NAME), obj(fake, "services", NAME), canary_deployment,
                         canary_service):
                assert_valid_and_restricted(made)

            mark = fake.mark()
            again = client.post(f"{DEPLOYMENT}/canary", json={"mlflowRunId": run_a, "trafficPercent": 5})
            assert again.status_code == 409, again.text
            assert changes_since(fake, mark) == []

            # -- 2. its model server ready: predicts split by weight -----------------------------------
            port_b = start_model_server(canary_deployment, mlflow_uri, model_servers)
            fake.set_backend(CANARY, "127.0.0.1", port_b)
            fake.make_deployment_available(CANARY)
            wait_until(lambda: canary_ready(client), 10, 0.05, "the canary's pod to be ready")
            wait_until(lambda: client.post(PREDICT, json=PREDICT_BODY).headers.get("x-mlops-revision") == "2", 10,
                       0.02, "a first answer from the canary")
            shares = served_by(client, 300)
            assert set(shares) == {"1", "2"}, shares
            assert 0.10 <= shares["2"] / 300 <= 0.30, shares
            status = client.get(DEPLOYMENT).json()
            assert (status["canary"]["revision"], status["canary"]["weight"], status["canary"]["readyReplicas"]) == (
                2, 20, 1)
            assert (status["servingRevision"], status["revision"], status["status"]) == (1, 1, "Ready")
            traffic = {item["revision"]: item for item in status["traffic"]}
            assert (traffic[1]["weight"], traffic[2]["weight"]) == (80, 20)
            assert traffic[2]["requests"] >= shares["2"] and traffic[2]["errorRatio"] == 0

            # -- 3. a new weight is only the weight ----------------------------------------------------
            canary_uid = canary_deployment["metadata"]["uid"]
            mark = fake.mark()
            moved = client.patch(f"{DEPLOYMENT}/canary", json={"trafficPercent": 60})
            assert moved.status_code == 202, moved.text
            assert changes_since(fake, mark) == [("update", "deployments", NAME)]
            assert obj(fake, "deployments", CANARY)["metadata"]["uid"] == canary_uid
            assert obj(fake, "deployments", NAME)["spec"] == stable_before["spec"]
            assert client.get(DEPLOYMENT).json()["canary"]["weight"] == 60
            assert revisions(client) == [(2, "Canary"), (1, "Serving")]

        # -- 4. a restarted API keeps the canary, its weight and the revisions ---------------------------
        app, _ = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            wait_until(lambda: canary_ready(client), 10, 0.05, "the canary after a restart")
            status = client.get(DEPLOYMENT).json()
            assert (status["canary"]["revision"], status["canary"]["weight"], status["revision"]) == (2, 60, 1)
            assert revisions(client) == [(2, "Canary"), (1, "Serving")]
            wait_until(lambda: set(served_by(client, 10)) == {"1", "2"}, 10, 0.05, "both revisions to answer")

            # -- 5. promoted: the stable template serves the canary's revision, its objects go ------------
            promoted = client.post(f"{DEPLOYMENT}/canary/promote")
            assert promoted.status_code == 202, promoted.text
            assert (promoted.json()["revision"], promoted.json()["canary"]) == (2, None)
            stable = obj(fake, "deployments", NAME)
            assert stable["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
            assert served_run(stable) == f"runs:/{run_b}/model"
            assert_valid_and_restricted(stable)
            assert fake.get("deployments", CANARY) is None and fake.get("services", CANARY) is None
            # The rolling update: revision 2's pods (run B's model server) replace revision 1's.
            fake.set_backend(NAME, "127.0.0.1", port_b)
            fake.roll_out(NAME)
            wait_until(lambda: client.get(DEPLOYMENT).json()["servingRevision"] == 2, 10, 0.05,
                       "revision 2 to serve")
            assert revisions(client) == [(2, "Serving"), (1, "Retired")]
            wait_until(lambda: served_by(client, 20) == {"2": 20}, 10, 0.05, "revision 2 to answer alone")
            missing = client.delete(f"{DEPLOYMENT}/canary")
            assert missing.status_code == 404, missing.text

            # -- 6. a canary over its p99 threshold is aborted by the control plane -------------------------
            slow = client.post(f"{DEPLOYMENT}/canary", json={
                "mlflowRunId": run_a, "trafficPercent": 50,
                "autoAbort": {"maxP99Seconds": 0.0001, "windowSeconds": 5, "minRequests": 10}})
            assert slow.status_code == 202, slow.text
            assert slow.json()["canary"]["revision"] == 3
            assert served_run(obj(fake, "deployments", CANARY)) == f"runs:/{run_a}/model"
            fake.set_backend(CANARY, "127.0.0.1", port_a)  # run A's model server is there already
            fake.make_deployment_available(CANARY)
            wait_until(lambda: canary_ready(client), 10, 0.05, "the slow canary to be ready")

            def aborted() -> dict[str, Any] | None:
                assert set(served_by(client, 5)) <= {"2", "3"}
                newest = client.get(f"{DEPLOYMENT}/revisions").json()["items"][0]
                return newest if newest["state"] == "Retired" else None

            retired = wait_until(aborted, 30, 0.05, "the control plane to abort the canary")
            assert retired["revision"] == 3
            assert "aborted by the control plane" in retired["message"] and "p99 latency" in retired["message"]
            assert client.get(DEPLOYMENT).json()["canary"] is None
            wait_until(lambda: fake.get("deployments", CANARY) is None and fake.get("services", CANARY) is None, 5,
                       0.05, "the canary's objects to go")
            assert revisions(client) == [(3, "Retired"), (2, "Serving"), (1, "Retired")]
            wait_until(lambda: served_by(client, 20) == {"2": 20}, 10, 0.05, "revision 2 to answer alone again")

            # -- 7. autoscaling: an autoscaling/v2 HorizontalPodAutoscaler, and none again -------------------
            mark = fake.mark()
            dry = client.patch(DEPLOYMENT, params={"dryRun": "true"}, json={"autoscaling": AUTOSCALING})
            assert dry.status_code == 200, dry.text
            (planned_hpa,) = [m for m in dry.json()["manifests"] if m["kind"] == "HorizontalPodAutoscaler"]
            assert planned_hpa["apiVersion"] == "autoscaling/v2"
            assert changes_since(fake, mark) == [] and fake.names("horizontalpodautoscalers") == []

            scaled = client.patch(DEPLOYMENT, json={"autoscaling": AUTOSCALING})
            assert scaled.status_code == 202, scaled.text
            assert scaled.json()["autoscaling"]["maxReplicas"] == 4 and scaled.json()["revision"] == 2
            hpa = obj(fake, "horizontalpodautoscalers", NAME)
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
            (metric,) = hpa["spec"]["metrics"]
            assert metric["resource"]["name"] == "cpu"
            assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
            assert_valid_and_restricted(hpa)
            assert_valid_and_restricted(obj(fake, "deployments", NAME))

            fixed = client.patch(DEPLOYMENT, json={"autoscaling": None})
            assert fixed.status_code == 202, fixed.text
            assert fixed.json()["autoscaling"] is None
            assert fake.names("horizontalpodautoscalers") == []
            assert served_by(client, 5) == {"2": 5}

        undeclared = {(c.verb, c.resource) for c in fake.calls
                      if not allows(REQUIRED_PERMISSIONS + API_PROXY_PERMISSIONS, c.api_group, c.resource, c.verb)}
        assert not undeclared
