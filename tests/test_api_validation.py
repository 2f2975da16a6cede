"""Bad input is refused with a clear error that names the field and the rule, and changes nothing."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support import free_port, regression_csv


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data_dir: Path, mlflow_uri: str) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=data_dir, mlflow_uri=mlflow_uri))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def train_body(tmp_path: Path) -> dict:
    csv = regression_csv(tmp_path / "data.csv", rows=50)
    return {"taskId": "train-a", "experimentName": "e", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "hyperparameters": {"numEpoch": 2}}


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def no_tasks_created(data_dir: Path) -> bool:
    return not any(data_dir.glob("tasks/*/*"))


@pytest.mark.parametrize("task_id", ["Train-A", "train_a", "-train", "train-", "a" * 58, "", "train.a", "tr ain"])
def test_task_id_that_is_not_a_kubernetes_name_is_422(client, train_body, data_dir, task_id) -> None:
    response = client.post("/api/v1/train/jobs", json={**train_body, "taskId": task_id})
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == "taskId"
    assert "lowercase" in error["message"] or "empty" in error["message"] or "at most" in error["message"]
    assert no_tasks_created(data_dir)


def test_model_id_rule_is_checked_on_deploy(client) -> None:
    response = client.post("/api/v1/inference/deployments", json={
        "taskId": "d", "modelId": "Predictor_House", "mlflowRunId": "0" * 32, "modelProfile": "tabular_regression"})
    assert response.status_code == 422
    assert error_of(response)["field"] == "modelId"


def test_unknown_profile_lists_the_known_ones(client, train_body, data_dir) -> None:
    response = client.post("/api/v1/train/jobs", json={**train_body, "modelProfile": "gpt_9000"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == "modelProfile"
    assert "tabular_classification" in error["message"] and "tabular_regression" in error["message"]
    assert no_tasks_created(data_dir)


@pytest.mark.parametrize(
    ("hyperparameters", "field", "words"),
    [
        ({"numEpoch": 0}, "hyperparameters.numEpoch", "at least 1"),
        ({"numEpoch": 1_000_000}, "hyperparameters.numEpoch", "at most"),
        ({"numEpoch": "ten"}, "hyperparameters.numEpoch", "integer"),
        ({"numEpoch": 2.5}, "hyperparameters.numEpoch", "integer"),
        ({"numEpoch": True}, "hyperparameters.numEpoch", "integer"),
        ({"learningRate": -0.1}, "hyperparameters.learningRate", "at least"),
        ({"learningRate": "fast"}, "hyperparameters.learningRate", "number"),
        ({"numBatchSize": 8}, "hyperparameters.numBatchSize", "known: "),
    ],
)
def test_hyperparameters_outside_the_profile_are_422(client, train_body, data_dir, hyperparameters, field, words):
    response = client.post("/api/v1/train/jobs", json={**train_body, "hyperparameters": hyperparameters})
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == field
    assert words in error["message"]
    assert no_tasks_created(data_dir)


def test_unknown_and_missing_fields_are_named(client, train_body) -> None:
    typo = client.post("/api/v1/train/jobs", json={**train_body, "hyperparameter": {}})
    assert typo.status_code == 422 and error_of(typo)["field"] == "hyperparameter"
    missing = {k: v for k, v in train_body.items() if k != "datasetPath"}
    response = client.post("/api/v1/train/jobs", json=missing)
    assert response.status_code == 422 and error_of(response)["field"] == "datasetPath"
    wrong_type = client.post("/api/v1/train/jobs", json={**train_body, "useGpu": "maybe"})
    assert wrong_type.status_code == 422 and error_of(wrong_type)["field"] == "useGpu"
    not_json = client.post("/api/v1/train/jobs", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_dataset_rules(client, train_body, data_dir) -> None:
    missing = client.post("/api/v1/train/jobs", json={**train_body, "datasetPath": "/nowhere/data.csv"})
    assert missing.status_code == 422 and error_of(missing)["field"] == "datasetPath"
    scheme = client.post("/api/v1/train/jobs", json={**train_body, "datasetPath": "ftp://host/data.csv"})
    assert scheme.status_code == 422 and "scheme 'ftp'" in error_of(scheme)["message"]
    assert no_tasks_created(data_dir)


def test_trainer_image_outside_the_allowlist_is_403(client, train_body, data_dir) -> None:
    response = client.post("/api/v1/train/jobs", json={**train_body, "trainerImage": "evil.example/miner:latest"})
    assert response.status_code == 403
    assert error_of(response)["field"] == "trainerImage"
    allowed = client.post("/api/v1/train/jobs?dryRun=true",
                          json={**train_body, "trainerImage": "localhost:5002/mlflow-trainer:v2"})
    assert allowed.status_code == 200
    assert no_tasks_created(data_dir)


def test_dry_run_returns_the_job_and_applies_nothing(client, train_body, data_dir) -> None:
    response = client.post("/api/v1/train/jobs", params={"dryRun": "true"}, json=train_body)
    assert response.status_code == 200
    (job,) = response.json()["manifests"]
    assert job["kind"] == "Job" and job["metadata"]["name"] == "train-train-a"
    assert no_tasks_created(data_dir)
    deploy = client.post("/api/v1/inference/deployments", params={"dryRun": "true"}, json={
        "taskId": "deploy-a", "modelId": "model-a", "mlflowRunId": "0" * 32, "modelProfile": "tabular_regression",
        "useGpu": True})
    assert deploy.status_code == 200
    kinds = [m["kind"] for m in deploy.json()["manifests"]]
    assert kinds == ["Deployment", "Service"]
    assert no_tasks_created(data_dir)


@pytest.mark.parametrize("ghost", ["ghost", "..", "x" * 300, "Ṱo%20invoke%20chaos", "UPPER", "a_b"])
def test_unknown_task_is_404_on_every_route(client, ghost: str) -> None:
    """Ids no task can have too: never a path on disk (a name too long for it, "..")."""
    for method, path in [
        ("GET", "/api/v1/train/jobs/ghost"),
        ("GET", "/api/v1/train/jobs/ghost/status"),
        ("GET", "/api/v1/train/jobs/ghost/logs"),
        ("GET", "/api/v1/train/jobs/ghost/logs?follow=true"),
        ("DELETE", "/api/v1/train/jobs/ghost"),
        ("GET", "/api/v1/inference/deployments/ghost"),
        ("GET", "/api/v1/inference/deployments/ghost/logs"),
        ("DELETE", "/api/v1/inference/deployments/ghost"),
        ("POST", "/api/v1/inference/ghost/predict"),
    ]:
        path = path.replace("/ghost", "/" + ghost)
        response = client.request(method, path, json={"data": {"features": [[1]]}} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["code"] == "not_found"


def test_deploying_an_unknown_run_is_404(client, data_dir) -> None:
    response = client.post("/api/v1/inference/deployments", json={
        "taskId": "deploy-x", "modelId": "model-x", "mlflowRunId": "f" * 32, "modelProfile": "tabular_regression"})
    assert response.status_code == 404
    assert error_of(response)["field"] == "mlflowRunId"
    assert no_tasks_created(data_dir)


def test_mlflow_down_when_deploying_is_503_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    app = create_app(Settings(data_dir=data_dir, mlflow_uri=f"http://127.0.0.1:{free_port()}"))
    with TestClient(app) as client:
        response = client.post("/api/v1/inference/deployments", json={
            "taskId": "deploy-y", "modelId": "model-y", "mlflowRunId": "a" * 32, "modelProfile": "tabular_regression"})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "MLflow" in error_of(response)["message"]
    assert no_tasks_created(data_dir)


def test_openapi_documents_the_routes(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/v1/train/jobs", "/api/v1/train/jobs/{task_id}/status", "/api/v1/train/jobs/{task_id}/logs",
                 "/api/v1/inference/deployments", "/api/v1/inference/{task_id}/predict"]:
        assert path in paths
