"""The seed's walkthrough on the local runtime, as a user runs it: a real API process, a real
MLflow server, real trainer and model-server processes."""

import json
import os
import signal
import threading
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from tests.support import classification_csv, regression_csv, wait_until

SEED_TRAIN_BODY = {
    "taskId": "train-reg-01",
    "experimentName": "House Price Prediction",
    "modelProfile": "tabular_regression",
    "customModelName": "predictorHouseValue",
    "initialModelFilePath": "None",
    "datasetPath": "s3://datasets/house-prices.csv",
    "trainerImage": "localhost:5002/mlflow-trainer:latest",
    "useGpu": False,
    "hyperparameters": {"numEpoch": 100, "learningRate": 0.001, "numBatch": 32},
}
SEED_PREDICT_BODY = {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4, 0.2, 4.9, 3.0, 1.4, 0.2]]}}


def wait_for_training(client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    def finished() -> dict | None:
        status = client.get(f"/api/v1/train/jobs/{task_id}/status").json()
        if status["status"] == "Succeeded" and not status["mlflowRunId"]:
            return None  # MLflow under load may answer the run lookup on the next read
        return status if status["status"] in ("Succeeded", "Failed") else None

    return wait_until(finished, timeout, what=f"training task {task_id} to finish")


def wait_for_deployment(client: httpx.Client, task_id: str, want: str = "Ready", timeout: float = 90) -> dict:
    def reached() -> dict | None:
        body = client.get(f"/api/v1/inference/deployments/{task_id}").json()
        return body if body["status"] == want else None

    return wait_until(reached, timeout, what=f"deployment {task_id} to be {want}")


def test_seed_walkthrough_train_deploy_predict_restart_delete(api_factory, tmp_path: Path) -> None:
    api = api_factory()
    csv = regression_csv(tmp_path / "house-prices.csv")
    body = {**SEED_TRAIN_BODY, "datasetPath": str(csv), "hyperparameters": {**SEED_TRAIN_BODY["hyperparameters"],
                                                                           "numEpoch": 40, "learningRate": 0.01}}
    with api.client() as client:
        created = client.post("/api/v1/train/jobs", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["taskId"] == "train-reg-01"
        assert created.json()["status"] in ("Pending", "Running")
        # The same request again is the same task; another spec under the same id is refused.
        assert client.post("/api/v1/train/jobs", json=body).status_code == 200
        other = client.post("/api/v1/train/jobs", json={**body, "hyperparameters": {"numEpoch": 7}})
        assert other.status_code == 409
        assert "hyperparameters.numEpoch" in other.json()["error"]["message"]

        status = wait_for_training(client, "train-reg-01")
        assert status["status"] == "Succeeded", status
        assert status["startTime"] and status["completionTime"]
        run_id = status["mlflowRunId"]
        assert run_id and len(run_id) == 32

        logs = client.get("/api/v1/train/jobs/train-reg-01/logs").text
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        epochs = [e for e in events if e["message"] == "epoch"]
        assert all(e["taskId"] == "train-reg-01" and e["level"] in ("INFO", "WARNING") and "time" in e
                   for e in events)
        assert all(line.startswith("{") for line in logs.splitlines())  # MLflow's own lines too
        assert [e["epoch"] for e in epochs] == list(range(1, 41))
        assert epochs[-1]["val_r2"] > 0.9
        tail = client.get("/api/v1/train/jobs/train-reg-01/logs", params={"tail": 2}).text
        assert len(tail.splitlines()) == 2 and tail.splitlines()[-1] in logs
        assert [t["taskId"] for t in client.get("/api/v1/train/jobs").json()["items"]] == ["train-reg-01"]

        deploy = {"taskId": "deploy-reg-01", "modelId": "predictor-house-v1", "mlflowRunId": run_id,
                  "modelProfile": "tabular_regression", "useGpu": False}
        created = client.post("/api/v1/inference/deployments", json=deploy)
        assert created.status_code == 201, created.text
        wait_for_deployment(client, "deploy-reg-01")

        answer = client.post("/api/v1/inference/deploy-reg-01/predict", json=SEED_PREDICT_BODY)
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        expected = sum(v * w for v, w in zip(SEED_PREDICT_BODY["data"]["features"][0], range(1, 9), strict=True)) + 3.0
        assert abs(prediction - expected) < 0.2 * abs(expected)

        wrong_width = client.post("/api/v1/inference/deploy-reg-01/predict", json={"data": {"features": [[1, 2]]}})
        assert wrong_width.status_code == 422
        assert "expects 8 features" in wrong_width.json()["error"]["message"]
        not_numbers = client.post("/api/v1/inference/deploy-reg-01/predict", json={"data": {"features": [["a"] * 8]}})
        assert not_numbers.status_code == 422
        assert client.post("/api/v1/inference/deploy-reg-01/predict", content=b"{oops").status_code == 400

    # Restart the API: every task is still there, and the deployment still predicts.
    api.stop()
    api = api_factory()
    with api.client() as client:
        assert client.get("/api/v1/train/jobs/train-reg-01/status").json()["status"] == "Succeeded"
        deployments = client.get("/api/v1/inference/deployments").json()["items"]
        assert [(d["taskId"], d["status"]) for d in deployments] == [("deploy-reg-01", "Ready")]
        assert client.post("/api/v1/inference/deploy-reg-01/predict", json=SEED_PREDICT_BODY).json() == answer.json()

        assert client.delete("/api/v1/inference/deployments/deploy-reg-01").status_code == 200
        assert client.get("/api/v1/inference/deployments/deploy-reg-01").status_code == 404
        # The model server's last output is kept with the run it served.
        kept = MlflowClient(api.env["MLOPS_MLFLOW_URI"]).download_artifacts(
            run_id, "serving-logs/deploy-reg-01.log", str(tmp_path))
        assert Path(kept).read_text().strip()
        assert client.post("/api/v1/inference/deploy-reg-01/predict", json=SEED_PREDICT_BODY).status_code == 404
        assert client.delete("/api/v1/train/jobs/train-reg-01").status_code == 200
        assert client.get("/api/v1/train/jobs/train-reg-01/status").status_code == 404
        assert client.get("/api/v1/train/jobs").json()["items"] == []


def test_classifier_predicts_labels_and_probabilities(api, tmp_path: Path) -> None:
    csv = classification_csv(tmp_path / "flowers.csv")
    with api.client() as client:
        created = client.post("/api/v1/train/jobs", json={
            "taskId": "train-cls", "experimentName": "flowers", "modelProfile": "tabular_classification",
            "customModelName": "flowerClassifier", "datasetPath": f"file://{csv}", "targetColumn": "species",
            "hyperparameters": {"numEpoch": 30},
        })
        assert created.status_code == 201, created.text
        status = wait_for_training(client, "train-cls")
        assert status["status"] == "Succeeded", status
        deploy = client.post("/api/v1/inference/deployments", json={
            "taskId": "deploy-cls", "modelId": "flowers-v1", "mlflowRunId": status["mlflowRunId"],
            "modelProfile": "tabular_classification"})
        assert deploy.status_code == 201, deploy.text
        wait_for_deployment(client, "deploy-cls")
        rows = [[2.0, 0.0, 0.1, 0.2], [-1.0, 1.5, 0.0, 0.0], [-1.0, -1.5, 0.0, 0.0]]
        answer = client.post("/api/v1/inference/deploy-cls/predict", json={"userId": "u", "data": {"features": rows}})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["predictions"] == ["setosa", "versicolor", "virginica"]
        assert result["classes"] == ["setosa", "versicolor", "virginica"]
        assert all(abs(sum(p) - 1) < 1e-6 for p in result["probabilities"])

        # The model server dies: predicts get 503 with Retry-After until it is back, by itself.
        status_file = api.data_dir / "tasks" / "inference" / "deploy-cls" / "status.json"
        os.kill(json.loads(status_file.read_text())["pid"], signal.SIGKILL)
        down = client.post("/api/v1/inference/deploy-cls/predict", json={"data": {"features": rows}})
        assert down.status_code in (200, 503), down.text  # 200 only if it was restarted already
        if down.status_code == 503:
            assert down.headers["retry-after"]
        wait_until(lambda: client.post("/api/v1/inference/deploy-cls/predict",
                                       json={"data": {"features": rows}}).status_code == 200,
                   timeout=60, what="the model server to be restarted")
        assert client.get("/api/v1/inference/deployments/deploy-cls").json()["status"] == "Ready"


def test_trainer_error_is_the_status_message(api, tmp_path: Path) -> None:
    csv = regression_csv(tmp_path / "data.csv")
    with api.client() as client:
        created = client.post("/api/v1/train/jobs", json={
            "taskId": "bad-target", "experimentName": "errors", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "targetColumn": "no_such_column", "hyperparameters": {"numEpoch": 1}})
        assert created.status_code == 201, created.text
        status = wait_for_training(client, "bad-target")
        assert status["status"] == "Failed"
        assert "target column 'no_such_column' not found" in status["message"]
        assert status["mlflowRunId"]  # the failed run is in MLflow too
        assert "no_such_column" in client.get("/api/v1/train/jobs/bad-target/logs").text


def test_logs_follow_streams_until_the_job_ends(api, tmp_path: Path) -> None:
    csv = regression_csv(tmp_path / "data.csv", rows=2000)
    with api.client() as client:
        client.post("/api/v1/train/jobs", json={
            "taskId": "follow-me", "experimentName": "follow", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "hyperparameters": {"numEpoch": 15}}).raise_for_status()
        chunks: list[str] = []
        with client.stream("GET", "/api/v1/train/jobs/follow-me/logs", params={"follow": "true"}, timeout=120) as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                chunks.append(chunk)
        text = "".join(chunks)
        events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any(e.get("epoch") == 15 for e in events) and events[-1]["message"] == "done"
        assert len(chunks) > 1  # it arrived as the job went, not at once
        assert client.get("/api/v1/train/jobs/follow-me/status").json()["status"] == "Succeeded"


def test_concurrent_creates_of_one_task_make_one_task(api, tmp_path: Path) -> None:
    csv = regression_csv(tmp_path / "data.csv")
    body = {"taskId": "racy", "experimentName": "race", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "hyperparameters": {"numEpoch": 1}}
    codes: list[int] = []

    def create() -> None:
        with api.client() as client:
            codes.append(client.post("/api/v1/train/jobs", json=body).status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200] * 5 + [201]
    assert len(list((api.data_dir / "tasks" / "training").iterdir())) == 1
    with api.client() as client:
        assert wait_for_training(client, "racy")["status"] == "Succeeded"
