"""The API's train -> status -> logs -> deploy -> predict -> delete flow on the Kubernetes runtime.

The cluster is the HTTP fake of the Kubernetes API; the test plays its kubelet: it runs the Job's
container (script/train.py, with the Job's own environment) against a real MLflow server, and the
Deployment's container (script/serve.py) as a real model server that the fake's service proxy
forwards to. Nothing in the routers knows which runtime is underneath.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.main import create_app
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import RetryPolicy
from app.runtime.permissions import API_PROXY_PERMISSIONS, REQUIRED_PERMISSIONS, allows
from app.settings import PROJECT_ROOT, Settings
from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, TERMINATION_LOG_ENV, TRAIN_SPEC_ENV, TrainSpec
from tests.fake_kube import FakeKube
from tests.fake_kube.runtime import caught_up
from tests.support import free_port, regression_csv, wait_until

ADMIN_TOKEN = "admin-token-for-k8s-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PREDICT_BODY = {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4, 0.2, 4.9, 3.0, 1.4, 0.2]]}}


def container_env(workload: dict[str, Any], mlflow_uri: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it; the ConfigMap holds MLflow's address."""
    config_map = {"MLFLOW_TRACKING_URI": mlflow_uri}
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLOPS_")}
    for item in workload["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            key = item["valueFrom"]["configMapKeyRef"]["key"]
            if key in config_map:
                env[item["name"]] = config_map[key]
    env["HOME"] = os.environ.get("HOME", "/tmp")
    return env


def run_trainer_as_kubelet(fake: FakeKube, job_name: str, dataset: Path, mlflow_uri: str, tmp_path: Path) -> None:
    """Run the Job's container here: its output becomes the pod's log, its exit the Job's end."""
    pod = fake.start_job(job_name)
    job = fake.get("jobs", job_name)
    env = container_env(job, mlflow_uri)
    # No S3 server in this test: the dataset the Job names (s3://...) is mounted here as a local file.
    spec = TrainSpec.model_validate_json(env[TRAIN_SPEC_ENV]).model_copy(update={"dataset_path": str(dataset)})
    env[TRAIN_SPEC_ENV] = spec.model_dump_json()
    env[TERMINATION_LOG_ENV] = str(tmp_path / "termination-log")
    done = subprocess.run(
        [sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=180
    )
    fake.write_log(pod, done.stdout + done.stderr)
    if done.returncode == 0:
        fake.complete_job(job_name)
    else:
        words = Path(env[TERMINATION_LOG_ENV]).read_text() if Path(env[TERMINATION_LOG_ENV]).exists() else ""
        fake.fail_job(job_name, exit_code=done.returncode, termination_message=words)




def start_model_server(deployment: dict[str, Any], mlflow_uri: str, servers: list) -> int:
    """Run the Deployment's container here, on a free loopback port; return the port once it is ready."""
    port = free_port()
    env = container_env(deployment, mlflow_uri) | {SERVE_HOST_ENV: "127.0.0.1", SERVE_PORT_ENV: str(port)}
    process = subprocess.Popen([sys.executable, "script/serve.py"], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.append(process)

    def ready() -> bool:
        assert process.poll() is None, f"the model server exited with {process.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 90, 0.2, "the model server to load its model")
    return port


def kubernetes_app(fake: FakeKube, mlflow_uri: str) -> tuple[Any, KubernetesRuntime]:
    runtime = KubernetesRuntime(fake.api_client(), fake.namespace, retry=RetryPolicy(first_delay=0.01),
                                watch_retry_delay_seconds=0.05)
    settings = Settings(runtime="kubernetes", mlflow_uri=mlflow_uri, namespace=fake.namespace,
                        api_tokens=f"admin:{ADMIN_TOKEN}")
    return create_app(settings, runtime=runtime), runtime


def test_train_status_deploy_predict_delete_on_kubernetes(
    mlflow_uri: str, tmp_path: Path, model_servers: list[subprocess.Popen[bytes]]
) -> None:
    dataset = regression_csv(tmp_path / "houses.csv")
    with FakeKube(token="cluster-token") as fake:
        app, runtime = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            local = client.post("/api/v1/train/jobs", json={
                "taskId": "local-path", "experimentName": "k8s", "modelProfile": "tabular_regression",
                "datasetPath": str(dataset)})
            assert local.status_code == 422 and "s3://" in local.json()["error"]["message"]

            body = {"taskId": "k8s-train", "experimentName": "k8s-house-prices", "modelProfile": "tabular_regression",
                    "customModelName": "houseK8s", "datasetPath": "s3://datasets/houses.csv",
                    "hyperparameters": {"numEpoch": 30, "learningRate": 0.01}}
            created = client.post("/api/v1/train/jobs", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "Pending" and created.json()["jobName"] == "train-k8s-train"
            assert client.post("/api/v1/train/jobs", json=body).status_code == 200  # the same request again
            conflict = client.post("/api/v1/train/jobs", json={**body, "hyperparameters": {"numEpoch": 7}})
            assert conflict.status_code == 409

            run_trainer_as_kubelet(fake, "train-k8s-train", dataset, mlflow_uri, tmp_path)
            caught_up(runtime, fake)  # the API reads the cluster through its watches
            status = client.get("/api/v1/train/jobs/k8s-train/status").json()
            assert status["status"] == "Succeeded", status
            assert status["startTime"] and status["completionTime"]
            run_id = status["mlflowRunId"]
            assert run_id and len(run_id) == 32
            logs = client.get("/api/v1/train/jobs/k8s-train/logs").text
            finished = [json.loads(line) for line in logs.splitlines() if '"run finished"' in line]
            assert finished and finished[0]["runId"] == run_id
            assert len(client.get("/api/v1/train/jobs/k8s-train/logs", params={"tail": 2}).text.splitlines()) == 2

            deploy = {"taskId": "k8s-deploy", "modelId": "house-k8s", "mlflowRunId": run_id,
                      "modelProfile": "tabular_regression"}
            created = client.post("/api/v1/inference/deployments", json=deploy)
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "Pending" and created.json()["serviceName"] == "infer-house-k8s"
            not_ready = client.post("/api/v1/inference/k8s-deploy/predict", json=PREDICT_BODY)
            assert not_ready.status_code == 503 and not_ready.headers["Retry-After"]

            port = start_model_server(fake.get("deployments", "infer-house-k8s"), mlflow_uri, model_servers)
            fake.set_backend("infer-house-k8s", "127.0.0.1", port)
            fake.make_deployment_available("infer-house-k8s")
            wait_until(lambda: client.get("/api/v1/inference/deployments/k8s-deploy").json()["status"] == "Ready", 10,
                       0.05, "the deployment to be Ready")
            wait_until(lambda: client.post("/api/v1/inference/k8s-deploy/predict", json=PREDICT_BODY).status_code
                       == 200, 10, 0.05, "the endpoint cache to route predicts")

            mark = fake.mark()
            answers = [client.post("/api/v1/inference/k8s-deploy/predict", json=PREDICT_BODY) for _ in range(25)]
            assert {answer.status_code for answer in answers} == {200}
            (prediction,) = answers[0].json()["predictions"]
            expected = sum(v * w for v, w in zip(PREDICT_BODY["data"]["features"][0], range(1, 9), strict=True)) + 3
            assert abs(prediction - expected) < 0.2 * abs(expected)
            # The only cluster traffic of a predict is the request itself, through the services proxy:
            # no lookup of the Service, its endpoints or the Deployment.
            through_cluster = fake.calls_since(mark)
            assert [(c.verb, c.resource) for c in through_cluster] == [("create", "services/proxy")] * 25

        # A restarted API (or a second replica) finds everything in the cluster and serves it.
        app, runtime = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            assert [t["taskId"] for t in client.get("/api/v1/train/jobs").json()["items"]] == ["k8s-train"]
            assert client.get("/api/v1/train/jobs/k8s-train/status").json()["mlflowRunId"] == run_id
            assert [d["status"] for d in client.get("/api/v1/inference/deployments").json()["items"]] == ["Ready"]
            assert client.post("/api/v1/inference/k8s-deploy/predict", json=PREDICT_BODY).status_code == 200

            assert client.delete("/api/v1/inference/deployments/k8s-deploy").status_code == 200
            assert fake.names("deployments") == [] and fake.names("services") == []
            assert client.post("/api/v1/inference/k8s-deploy/predict", json=PREDICT_BODY).status_code == 404
            # The Job's pod is gone (garbage-collected, a drained node): the log kept with the run is served.
            for pod in fake.pods_of("train-k8s-train"):
                fake.delete("pods", pod)
            for kept in (client.get("/api/v1/train/jobs/k8s-train/logs").text,
                         client.get("/api/v1/train/jobs/k8s-train/logs", params={"follow": "true"}).text):
                lines = [json.loads(line) for line in kept.splitlines()]
                assert [e["runId"] for e in lines if e["message"] == "run finished"] == [run_id]
                assert all(e["taskId"] == "k8s-train" for e in lines)
            assert len(client.get("/api/v1/train/jobs/k8s-train/logs", params={"tail": 1}).text.splitlines()) == 1
            assert client.delete("/api/v1/train/jobs/k8s-train").status_code == 200
            assert fake.names("jobs") == [] and fake.names("pods") == []
            assert client.get("/api/v1/train/jobs/k8s-train/status").status_code == 404

        undeclared = {(c.verb, c.resource) for c in fake.calls
                      if not allows(REQUIRED_PERMISSIONS + API_PROXY_PERMISSIONS, c.api_group, c.resource, c.verb)}
        assert not undeclared


def test_a_failed_training_job_shows_the_trainers_error(mlflow_uri: str, tmp_path: Path) -> None:
    dataset = regression_csv(tmp_path / "houses.csv", rows=50)
    with FakeKube(token="cluster-token") as fake:
        app, runtime = kubernetes_app(fake, mlflow_uri)
        with TestClient(app, headers=ADMIN) as client:
            created = client.post("/api/v1/train/jobs", json={
                "taskId": "bad-target", "experimentName": "k8s-errors", "modelProfile": "tabular_regression",
                "datasetPath": "s3://datasets/houses.csv", "targetColumn": "no_such_column",
                "hyperparameters": {"numEpoch": 1}})
            assert created.status_code == 201, created.text
            run_trainer_as_kubelet(fake, "train-bad-target", dataset, mlflow_uri, tmp_path)
            caught_up(runtime, fake)
            status = client.get("/api/v1/train/jobs/bad-target/status").json()
            assert status["status"] == "Failed"
            for pod in fake.pods_of("train-bad-target"):
                fake.delete("pods", pod)
            kept = client.get("/api/v1/train/jobs/bad-target/logs").text
            assert '"training failed: target column' in kept and '"level":"ERROR"' in kept
            assert status["message"].startswith("BackoffLimitExceeded: trainer exited with code 1: ")
            assert "target column 'no_such_column' not found" in status["message"]
            assert "no_such_column" in client.get("/api/v1/train/jobs/bad-target/logs").text
