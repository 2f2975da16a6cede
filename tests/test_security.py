"""Only the right people in: bearer tokens with two roles, body limits, and no token in any log."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.core.auth import AuthRequired, Role, TokenConfigError, parse_token_entries, required_role
from app.main import build_authenticator, create_app
from app.settings import Settings
from tests.support import regression_csv
from tests.test_e2e_local import SEED_PREDICT_BODY, wait_for_deployment, wait_for_training

ADMIN = "admin-token-0123456789abcdef"
PREDICTOR = "predict-token-0123456789abcdef"


@pytest.fixture
def secured(tmp_path: Path, mlflow_uri: str) -> Iterator[TestClient]:
    predict_digest = hashlib.sha256(PREDICTOR.encode()).hexdigest()
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# mounted from a Secret\npredict:sha256:{predict_digest}\n")
    settings = Settings(data_dir=tmp_path / "data", mlflow_uri=mlflow_uri, api_tokens=f"admin:{ADMIN}",
                        auth_tokens_file=tokens_file)
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_paths_and_the_role_they_need() -> None:
    assert required_role("/healthz") is None and required_role("/docs") is None
    assert required_role("/api/v1/train/jobs") == Role.ADMIN
    assert required_role("/api/v1/inference/deployments") == Role.ADMIN
    assert required_role("/api/v1/inference/deployments/x") == Role.ADMIN
    assert required_role("/api/v1/inference/deploy-1/predict") == Role.PREDICT
    assert required_role("/api/v1/inference/deploy-1/v1/chat/completions") == Role.PREDICT
    assert required_role("/api/v1/inference/deploy-1/predict/extra") == Role.ADMIN


def test_calls_without_a_valid_token_are_401(secured: TestClient) -> None:
    for headers in ({}, bearer("wrong-token-0123456789"), {"Authorization": ADMIN}, {"Authorization": "Basic eDp5"}):
        response = secured.get("/api/v1/train/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
    assert secured.post("/api/v1/inference/x/predict", json=SEED_PREDICT_BODY).status_code == 401
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert secured.get("/openapi.json").status_code == 200


def test_predict_token_may_only_predict(secured: TestClient) -> None:
    for method, path in [("GET", "/api/v1/train/jobs"), ("POST", "/api/v1/train/jobs"),
                         ("POST", "/api/v1/inference/deployments"), ("DELETE", "/api/v1/inference/deployments/x"),
                         ("GET", "/api/v1/inference/deployments")]:
        response = secured.request(method, path, headers=bearer(PREDICTOR), json={})
        assert response.status_code == 403, (method, path)
        assert "may only call predict" in response.json()["error"]["message"]
    # Past auth: the task does not exist.
    assert secured.post("/api/v1/inference/x/predict", headers=bearer(PREDICTOR), json=SEED_PREDICT_BODY
                        ).status_code == 404
    assert secured.post("/api/v1/inference/x/predict", headers=bearer(ADMIN), json=SEED_PREDICT_BODY
                        ).status_code == 404
    assert secured.get("/api/v1/train/jobs", headers=bearer(ADMIN)).status_code == 200


def test_openapi_declares_bearer_auth(secured: TestClient) -> None:
    document = secured.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/train/jobs"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_bodies_over_the_limit_are_413_before_anything_happens(tmp_path: Path, mlflow_uri: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", mlflow_uri=mlflow_uri, max_body_bytes=2048,
                        max_predict_body_bytes=4096)
    with TestClient(create_app(settings)) as client:
        big = {"taskId": "t", "experimentName": "x" * 3000, "modelProfile": "tabular_regression",
               "datasetPath": "/x.csv"}
        response = client.post("/api/v1/train/jobs", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield b'{"taskId": "t", "experimentName": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        streamed = client.post("/api/v1/train/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        predict = client.post("/api/v1/inference/x/predict", content=b"1" * 5000)
        assert predict.status_code == 413
        assert not any((tmp_path / "data").glob("tasks/*/*"))


def test_token_configuration_errors_are_clear() -> None:
    with pytest.raises(TokenConfigError, match="entry 1 must be"):
        parse_token_entries("root:abcdefghijklmnopqrstuvwxyz", "MLOPS_API_TOKENS")
    with pytest.raises(TokenConfigError, match="at least 16"):
        parse_token_entries("admin:short", "MLOPS_API_TOKENS")
    with pytest.raises(TokenConfigError, match="64 hex"):
        parse_token_entries("admin:sha256:abcd", "file")
    with pytest.raises(AuthRequired, match="MLOPS_AUTH_DISABLED"):
        build_authenticator(Settings(runtime="kubernetes", mlflow_uri="http://mlflow:5000"))
    assert not build_authenticator(Settings(runtime="kubernetes", auth_disabled=True)).enabled
    assert not build_authenticator(Settings()).enabled  # local and no tokens: open, on 127.0.0.1


def test_tokens_never_reach_logs_or_workloads(api_factory, tmp_path: Path) -> None:
    api = api_factory(MLOPS_API_TOKENS=f"admin:{ADMIN},predict:{PREDICTOR}")
    started = next(json.loads(line) for line in api.log_path.read_text().splitlines()
                   if '"control plane starting"' in line)
    assert started["auth"] == "on (2 token(s), roles: admin, predict)"
    csv = regression_csv(tmp_path / "data.csv", rows=60)
    with api.client(headers=bearer(ADMIN)) as client:
        client.post("/api/v1/train/jobs", json={"taskId": "t-sec", "experimentName": "sec",
                                                "modelProfile": "tabular_regression", "datasetPath": str(csv),
                                                "hyperparameters": {"numEpoch": 2}}).raise_for_status()
        run_id = wait_for_training(client, "t-sec")["mlflowRunId"]
        client.post("/api/v1/inference/deployments", json={"taskId": "d-sec", "modelId": "m-sec",
                                                           "mlflowRunId": run_id,
                                                           "modelProfile": "tabular_regression"}).raise_for_status()
        wait_for_deployment(client, "d-sec")
    with api.client(headers=bearer(PREDICTOR)) as client:
        assert client.post("/api/v1/inference/d-sec/predict", json=SEED_PREDICT_BODY).status_code == 200
        assert client.get("/api/v1/train/jobs").status_code == 403
    written = [path for path in api.data_dir.rglob("*") if path.is_file() and path.suffix != ".db"]
    assert any(path.name == "process.json" for path in written)
    for path in written:
        text = path.read_bytes()
        assert ADMIN.encode() not in text and PREDICTOR.encode() not in text, path
