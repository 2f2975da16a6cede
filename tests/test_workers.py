"""Several API workers on the local runtime: one view of every task, whichever worker answers."""

import json

from tests.test_e2e_local import SEED_PREDICT_BODY, wait_for_deployment


def test_two_workers_agree_on_status_and_both_predict(api_factory, trained_run_id: str) -> None:
    api = api_factory(MLOPS_WORKERS="2")
    started = next(json.loads(line) for line in api.log_path.read_text().splitlines()
                   if '"control plane starting"' in line)
    assert started["workers"] == 2
    with api.client() as client:
        created = client.post("/api/v1/inference/deployments", json={
            "taskId": "two-workers", "modelId": "model-two", "mlflowRunId": trained_run_id,
            "modelProfile": "tabular_regression"})
        assert created.status_code == 201, created.text
        wait_for_deployment(client, "two-workers")
        # New connections spread over both workers: each must say Ready from now on, and predict.
        for _ in range(20):
            with api.client() as fresh:
                assert fresh.get("/api/v1/inference/deployments/two-workers").json()["status"] == "Ready"
                answer = fresh.post("/api/v1/inference/two-workers/predict", json=SEED_PREDICT_BODY)
                assert answer.status_code == 200, answer.text
        listed = {t["taskId"] for t in client.get("/api/v1/inference/deployments").json()["items"]}
        assert listed == {"two-workers"}
