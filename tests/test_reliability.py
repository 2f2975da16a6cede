"""Nothing lost under load and faults: a killed model server, an API stopped mid-stream and mid-job."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from app.shutdown import CLOSING_LINE
from tests.support import regression_csv, wait_until
from tests.test_e2e_local import SEED_PREDICT_BODY, wait_for_deployment, wait_for_training


def deploy(client: httpx.Client, run_id: str, task_id: str = "deploy-load") -> None:
    response = client.post("/api/v1/inference/deployments", json={
        "taskId": task_id, "modelId": f"model-{task_id}", "mlflowRunId": run_id, "modelProfile": "tabular_regression"})
    assert response.status_code == 201, response.text
    wait_for_deployment(client, task_id)


def test_no_request_lost_under_load_while_the_model_server_is_killed(api_factory, trained_run_id: str) -> None:
    api = api_factory()
    with api.client() as client:
        deploy(client, trained_run_id)
        expected = client.post("/api/v1/inference/deploy-load/predict", json=SEED_PREDICT_BODY).json()
    outcomes: list[tuple[int, bytes, str | None]] = []
    errors: list[str] = []
    killed = threading.Event()
    recovered = threading.Event()
    deadline = time.monotonic() + 90  # the load stops once recovery is seen, or at this bound
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=api.url, timeout=15) as client:
            while not recovered.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post("/api/v1/inference/deploy-load/predict", json=SEED_PREDICT_BODY)
                except httpx.HTTPError as exc:  # a request the API dropped
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    outcomes.append((response.status_code, response.content, response.headers.get("retry-after")))
                    if killed.is_set() and response.status_code == 200 and any(c == 503 for c, _, _ in outcomes):
                        recovered.set()
                if response.status_code == 503:
                    time.sleep(0.1)  # a client backs off when told to retry (Retry-After), not spin

    threads = [threading.Thread(target=client_loop) for _ in range(12)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    status = json.loads((api.data_dir / "tasks/inference/deploy-load/status.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)
    killed.set()
    for thread in threads:
        thread.join()

    assert errors == []  # nothing lost: every request got an answer
    statuses = {code for code, _, _ in outcomes}
    assert statuses <= {200, 503}, [body for code, body, _ in outcomes if code not in (200, 503)][:3]
    assert 503 in statuses  # the kill was seen ...
    assert all(retry for code, _, retry in outcomes if code == 503)  # ... with Retry-After
    ok = [body for code, body, _ in outcomes if code == 200]
    assert all(json.loads(body) == expected for body in ok)  # never a wrong body
    state = (api.data_dir / "tasks/inference/deploy-load/status.json").read_text()
    assert recovered.is_set(), (state, [(c, b[:120]) for c, b, _ in outcomes[-3:]])  # it came back by itself


def test_shutdown_closes_streams_finishes_requests_and_a_restart_keeps_the_running_job(
    api_factory, trained_run_id: str, tmp_path: Path
) -> None:
    api = api_factory()
    csv = regression_csv(tmp_path / "long.csv", rows=4000)
    with api.client() as client:
        deploy(client, trained_run_id, "deploy-grace")
        client.post("/api/v1/train/jobs", json={
            "taskId": "long-job", "experimentName": "reliability", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "hyperparameters": {"numEpoch": 25, "numBatch": 16}}).raise_for_status()
        wait_until(lambda: client.get("/api/v1/train/jobs/long-job/status").json()["status"] == "Running",
                   timeout=60, what="the job to run")

    received: list[bytes] = []
    predicts: list[int] = []

    def follow() -> None:
        with httpx.Client(base_url=api.url, timeout=60) as client, client.stream(
            "GET", "/api/v1/train/jobs/long-job/logs", params={"follow": "true"}
        ) as response:
            received.extend(response.iter_bytes())

    def predict_burst() -> None:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(20):
                try:
                    predicts.append(client.post("/api/v1/inference/deploy-grace/predict",
                                                json=SEED_PREDICT_BODY).status_code)
                except httpx.HTTPError:
                    break  # the server stopped accepting: later requests were never in flight

    streamer = threading.Thread(target=follow)
    streamer.start()
    wait_until(lambda: received, timeout=20, what="the first streamed log lines")
    bursts = [threading.Thread(target=predict_burst) for _ in range(4)]
    for burst in bursts:
        burst.start()
    wait_until(lambda: predicts, timeout=20, what="predicts in flight before the stop")
    stopped = time.monotonic()
    api.stop()  # SIGINT, as Ctrl-C on make run
    assert time.monotonic() - stopped < 15
    streamer.join(timeout=10)
    for burst in bursts:
        burst.join(timeout=10)
    assert b"".join(received).endswith(CLOSING_LINE)
    assert predicts and set(predicts) == {200}  # every request it took was answered

    api = api_factory()
    with api.client() as client:
        assert client.get("/api/v1/train/jobs/long-job/status").json()["status"] in ("Running", "Succeeded")
        assert wait_for_training(client, "long-job", timeout=240)["status"] == "Succeeded"
        assert client.post("/api/v1/inference/deploy-grace/predict", json=SEED_PREDICT_BODY).status_code == 200
