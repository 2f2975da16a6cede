"""The observability platform's Prometheus side, run for real: Debian's Prometheus with the
repository's scrape job and rules scrapes a running API (`python -m app`, the local runtime) that
trained, deployed and answered predicts; every dashboard query over the API's metrics and every
recording rule answers with data, the alert rules are loaded and the failed training fires its
alert; and monitor_all.sh reads its per-deployment table from this Prometheus' /federate.

Kubernetes' pod discovery is not available off a cluster (and not built into Debian's
Prometheus): the pods it would find are given to the same job through file_sd, with the labels
and annotations of the manifests the platform deploys, so the job's relabelling runs unchanged.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.platform_support.contract import API_METRICS, MODEL_SERVER_METRICS
from tests.platform_support.fake_cluster import FakeCluster
from tests.platform_support.prometheus import (
    OBSERVABILITY,
    PROMETHEUS_DIR,
    RULE_FILES,
    binary,
    pod_target_group,
    running,
)
from tests.platform_support.renders import find, render_overlay
from tests.support import free_port, regression_csv, wait_until
from tests.test_e2e_local import wait_for_deployment, wait_for_training
from tests.test_observability_assets import dashboard, metric_names, substitute, targets

NS = "mlops-obs"
DASHBOARDS = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
# Series that come from elsewhere than the API: GPUs (DCGM), vLLM, the kubelet and cAdvisor, and
# the model servers' own metrics. Off a cluster, without a GPU or a language model, they are empty;
# the model servers' are too until script/serve.py serves /metrics and its pods carry the scrape
# annotations (the metrics contract): their target is given below and is kept then.
ELSEWHERE = re.compile(r"DCGM_FI_|vllm:|container_|kubelet_")


def scrape_config(api_port: int, data_dir: Path, directory: Path) -> dict[str, Any]:
    """The repository's configuration with its mlops-pods job fed by file_sd: the API's pod as
    the platform deploys it (kubernetes/base) and the model server's pod as the control plane made
    it (the Deployment the local runtime runs), at this machine's processes."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlops-pods"]
    api = find(render_overlay(NS), "Deployment", "fastapi-mlops-api")["spec"]["template"]
    served = json.loads((data_dir / "tasks" / "inference" / "deploy-obs" / "task.json").read_text())
    model_server = served["manifests"][0]["spec"]["template"]
    groups = [pod_target_group(api, NS, "fastapi-mlops-api-7d9f8-abcde", {"prometheus.io/port": str(api_port)}),
              pod_target_group(model_server, NS, "inference-observed-v1-5c6d7-fghij",
                               {"prometheus.io/port": str(served["ports"]["1"])})]
    (directory / "pods.json").write_text(json.dumps(groups))
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(directory / "pods.json")], "refresh_interval": "1s"}]
    job["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(path) for path in RULE_FILES]
    config["scrape_configs"] = [job]
    return config


def train(client: httpx.Client, task_id: str, csv: Path, **extra: Any) -> dict:
    created = client.post("/api/v1/train/jobs", json={
        "taskId": task_id, "experimentName": "observability", "modelProfile": "tabular_regression_sklearn",
        "customModelName": "observedLinear", "datasetPath": str(csv), "hyperparameters": {"estimator": "linear"},
        **extra})
    assert created.status_code == 201, created.text
    return wait_for_training(client, task_id, timeout=180)


@pytest.fixture
def prometheus_port() -> int:
    binary("prometheus")  # skipped, saying why, without it
    return free_port()


def test_prometheus_scrapes_the_api_and_answers_the_dashboards_and_rules(
        api_factory, tmp_path: Path, prometheus_port: int) -> None:
    api = api_factory()
    csv = regression_csv(tmp_path / "data.csv", rows=200)
    with api.client() as client:
        trained = train(client, "train-obs", csv)
        assert trained["status"] == "Succeeded", trained
        failed = train(client, "train-obs-bad", csv, targetColumn="no_such_column")
        assert failed["status"] == "Failed", failed
        deploy = client.post("/api/v1/inference/deployments", json={
            "taskId": "deploy-obs", "modelId": "observed-v1", "mlflowRunId": trained["mlflowRunId"],
            "modelProfile": "tabular_regression_sklearn"})
        assert deploy.status_code == 201, deploy.text
        wait_for_deployment(client, "deploy-obs")
        features = {"data": {"features": [[0.1 * i for i in range(8)]]}}
        wrong = {"data": {"features": [[1.0]]}}  # one feature where the model takes eight: 422

        config = scrape_config(api.port, api.data_dir, tmp_path)
        with running(config, tmp_path / "prometheus", prometheus_port) as prometheus:
            # The API is found through the relabelling and carries the pod's labels; every target
            # the relabelling keeps is scraped.
            def api_target() -> dict | None:
                active = prometheus.api("targets")["activeTargets"]
                return next((t for t in active if t["labels"].get("app") == "fastapi-mlops-api"
                             and t["health"] == "up"), None)

            target = wait_until(api_target, timeout=60, what="Prometheus to scrape the API")
            assert target["labels"]["namespace"] == NS and target["labels"]["pod"].startswith("fastapi-mlops-api-")
            assert target["scrapeUrl"] == f"http://127.0.0.1:{api.port}/metrics"
            wait_until(lambda: all(kept["health"] == "up" for kept in prometheus.api("targets")["activeTargets"]),
                       timeout=30, what="every target the relabelling keeps to be scraped")
            assert len(prometheus.api("targets")["activeTargets"]) == 2  # the API and the model server

            # Predicts, and some refused ones, while the rate windows fill: a rate sees what
            # happens between two scrapes.
            def recorded() -> list[dict]:
                assert client.post("/api/v1/inference/deploy-obs/predict", json=features).status_code == 200
                refused = client.post("/api/v1/inference/deploy-obs/predict", json=wrong)
                assert refused.status_code == 422, refused.text
                # Each rule's window needs two scrapes of its series; until then a ratio is 0/0 (NaN,
                # which no comparison keeps).
                return (prometheus.query('mlops:predict_errors_4xx:rate5m{task_id="deploy-obs"} > 0')
                        and prometheus.query(f'mlops:api_5xx_ratio:rate5m{{namespace="{NS}"}} >= 0'))

            wait_until(recorded, timeout=60, interval=0.5, what="the recording rules to have data")
            check_recording_rules(prometheus)
            check_dashboards(prometheus)
            check_alerts(prometheus)
            check_monitor(tmp_path, prometheus.url)


def check_recording_rules(prometheus) -> None:
    def value(expr: str) -> float:
        (sample,) = prometheus.query(expr)
        return float(sample["value"][1])

    series = {"namespace": NS, "task_id": "deploy-obs", "model_id": "observed-v1"}
    selector = ",".join(f'{k}="{v}"' for k, v in series.items())
    assert value(f"mlops:deployment_replicas:ready{{{selector}}}") == 1
    assert value(f"mlops:deployment_replicas:desired{{{selector}}}") == 1
    assert value(f"mlops:predict_errors_4xx:rate5m{{{selector}}}") > 0
    assert value(f"mlops:predict_errors_5xx:rate5m{{{selector}}}") == 0
    assert value(f"mlops:predict_5xx_ratio:rate5m{{{selector}}}") == 0
    p99 = value(f"mlops:predict_latency_seconds:p99_5m{{{selector}}}")
    assert 0 < p99 < 30 and not math.isnan(p99)
    assert value(f'mlops:training_tasks:by_status{{namespace="{NS}", status="Failed"}}') == 1
    assert value(f'mlops:training_tasks:by_status{{namespace="{NS}", status="Succeeded"}}') == 1
    assert value(f'mlops:api_5xx_ratio:rate5m{{namespace="{NS}"}}') == 0
    # Every recording rule the file defines has series now.
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    assert prometheus.query(rule["record"]), f"{rule['record']} has no data"


def check_dashboards(prometheus) -> None:
    """Every query over the API's and the model server's metrics answers with data; the others are
    named in ELSEWHERE."""
    asked = 0
    for path in DASHBOARDS:
        board = dashboard(path)
        for title, expr in targets(board, "prometheus"):
            names = metric_names(expr)
            if any(ELSEWHERE.match(name) for name in names):
                continue
            assert names and all(name.startswith("mlops:") or name.removesuffix("_bucket").removesuffix("_sum")
                                 .removesuffix("_count") in API_METRICS | MODEL_SERVER_METRICS or name == "up"
                                 for name in names), expr
            result = prometheus.query(substitute(expr, board))
            assert result, f"{path.name}: {title}: no data for {expr}"
            assert not all(math.isnan(float(sample["value"][1])) for sample in result), f"{path.name}: {title}"
            asked += 1
        for variable in board["templating"]["list"]:
            query = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            selector, label = substitute(query.group(1), board), query.group(2)
            if any(ELSEWHERE.match(name) for name in metric_names(selector)):
                continue
            values = prometheus.api(f"label/{label}/values", **{"match[]": selector})
            assert values, f"{path.name}: ${variable['name']} has no values"
    assert asked >= 25


def check_alerts(prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                assert loaded[name]["health"] == "ok", (name, loaded[name].get("lastError"))

    def failed_training_alert() -> list[dict]:
        return [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "MLOpsTrainingTaskFailed"]

    (alert,) = wait_until(failed_training_alert, timeout=30, what="the failed training's alert")
    assert alert["state"] == "firing" and alert["labels"]["namespace"] == NS
    assert alert["annotations"]["summary"] == f"1 training task(s) failed in namespace {NS}"
    firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert firing == {"MLOpsTrainingTaskFailed"}, "a Ready deployment without 5xx raises nothing"


def check_monitor(directory: Path, prometheus_url: str) -> None:
    """monitor_all.sh's traffic table, with kubectl's proxy to the Service prometheus answered
    by this Prometheus."""
    cluster = FakeCluster(directory / "cluster")
    cluster.add_namespace(NS)
    cluster.add_object(NS, "service", "prometheus", {"app.kubernetes.io/name": "prometheus"})
    result = cluster.run("monitor_all.sh", NS, env={"FAKE_PROMETHEUS_URL": prometheus_url})
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("(Prometheus, last 5 minutes) ===\n", 1)[1].split("\n\n")[0]
    header, *rows = [line.split() for line in section.splitlines()]
    assert header == ["TASK", "MODEL", "READY", "REQ/S", "P99(ms)", "4XX/S", "5XX/S"]
    (row,) = rows
    assert row[:3] == ["deploy-obs", "observed-v1", "1/1"]
    rate, p99, client_errors, server_errors = (float(v) for v in row[3:])
    assert rate > 0 and 0 < p99 < 30000 and client_errors > 0 and server_errors == 0
