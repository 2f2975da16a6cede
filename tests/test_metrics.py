"""GET /metrics of the API, as Prometheus reads it: predict calls by task with histogram buckets,
requests by route template, upstream failures by reason, and the state of tasks and endpoints;
summed across API workers."""

import json
import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import model_server_dir, wait_until
from tests.test_predict_path import _deploy_stub

Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    answer = httpx.get(url + "/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(answer.text)
            for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, sample_labels, v in samples if n == name and labels.items() <= sample_labels.items())


def test_metrics_count_predicts_by_task_across_api_workers(api_factory, tmp_path) -> None:
    _deploy_stub(tmp_path / "data")  # the deployment deploy-1 of model-1, a stub model server
    api = api_factory(MLOPS_WORKERS="2")
    body = {"data": {"features": [[1.0, 2.0]]}}
    with api.client() as client:
        # Both workers must have seen the stub ready: predicts in a row, spread over the workers.
        def predict() -> int:
            return client.post("/api/v1/inference/deploy-1/predict", json=body).status_code
        wait_until(lambda: all(predict() == 200 for _ in range(10)), timeout=30, what="every worker to route")
        before = value(scrape(api.url), "mlops_predict_requests_total", task_id="deploy-1", status="200")
        for _ in range(25):
            assert predict() == 200
        assert client.post("/api/v1/inference/ghost/predict", json=body).status_code == 404
        assert client.get("/api/v1/no/such/route").status_code == 404
        assert client.get("/api/v1/inference/deployments/deploy-1").json()["readyReplicas"] == 1

    samples = scrape(api.url)
    calls = value(samples, "mlops_predict_requests_total", task_id="deploy-1", model_id="model-1", route="predict",
                  status="200")
    assert calls - before == 25
    assert value(samples, "mlops_predict_request_duration_seconds_count", task_id="deploy-1") == calls
    buckets = [(labels["le"], v) for n, labels, v in samples
               if n == "mlops_predict_request_duration_seconds_bucket" and labels["task_id"] == "deploy-1"]
    assert len(buckets) >= 10 and dict(buckets)["+Inf"] == calls
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    template = "/api/v1/inference/{task_id}/predict"
    assert value(samples, "mlops_api_requests_total", route=template, status="200") == calls
    assert value(samples, "mlops_api_requests_total", route=template, status="404") == 1
    assert value(samples, "mlops_predict_requests_total", task_id="ghost", status="404") == 1
    assert value(samples, "mlops_api_requests_total", route="unmatched", status="404") == 1
    assert value(samples, "mlops_api_requests_total", route="/api/v1/inference/deployments/{task_id}",
                  method="GET", status="200") == 1
    # State, read from the runtime at the scrape.
    assert value(samples, "mlops_deployments", status="Ready") == 1
    assert value(samples, "mlops_deployments", status="Failed") == 0
    assert value(samples, "mlops_deployment_replicas", task_id="deploy-1", model_id="model-1", state="ready") == 1
    assert value(samples, "mlops_deployment_replicas", task_id="deploy-1", state="desired") == 1
    assert value(samples, "mlops_endpoints", state="ready") == 1
    assert value(samples, "mlops_training_tasks", status="Running") == 0


def test_upstream_failures_are_counted_by_reason(api_factory, tmp_path) -> None:

    data_dir = tmp_path / "data"
    _deploy_stub(data_dir)
    api = api_factory()
    body = {"data": {"features": [[1.0]]}}
    with api.client() as client:
        wait_until(lambda: client.post("/api/v1/inference/deploy-1/predict", json=body).status_code == 200,
                   timeout=30, what="the stub to answer")
        # The model server's process group goes away: the next predict is refused, 503.
        supervisor = json.loads((model_server_dir(data_dir, "deploy-1") / "supervisor.json").read_text())
        os.killpg(int(supervisor["pid"]), signal.SIGKILL)
        wait_until(lambda: client.post("/api/v1/inference/deploy-1/predict", json=body).status_code == 503,
                   timeout=10, what="a refused predict")
    samples = scrape(api.url)
    assert value(samples, "mlops_upstream_failures_total", task_id="deploy-1", reason="refused") >= 1
    assert value(samples, "mlops_predict_requests_total", task_id="deploy-1", status="503") >= 1
