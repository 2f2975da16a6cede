"""s3:// datasets through a real S3-protocol server (moto in server mode), read by the trainer with boto3."""

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.support import free_port, regression_csv
from tests.test_e2e_local import SEED_TRAIN_BODY, wait_for_training

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_seed_body_trains_from_s3(api_factory, s3_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                         if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    s3.create_bucket(Bucket="datasets")
    s3.upload_file(str(regression_csv(tmp_path / "house.csv")), "datasets", "house-prices.csv")
    # Locally, the workload's secretKeyRef credentials come from the API's environment.
    api = api_factory(MLOPS_S3_ENDPOINT_URL=s3_endpoint, **CREDENTIALS)
    with api.client() as client:
        body = {**SEED_TRAIN_BODY, "taskId": "train-s3", "hyperparameters": {"numEpoch": 5, "learningRate": 0.01}}
        assert body["datasetPath"] == "s3://datasets/house-prices.csv"
        assert client.post("/api/v1/train/jobs", json=body).status_code == 201
        missing = {**body, "taskId": "train-s3-missing", "datasetPath": "s3://datasets/nope.csv"}
        assert client.post("/api/v1/train/jobs", json=missing).status_code == 201
        status = wait_for_training(client, "train-s3")
        assert status["status"] == "Succeeded", status
        assert status["mlflowRunId"]
        logs = client.get("/api/v1/train/jobs/train-s3/logs").text
        assert '"rows": 300' in logs
        failed = wait_for_training(client, "train-s3-missing")
        assert failed["status"] == "Failed"
        assert "dataset not found: s3://datasets/nope.csv" in failed["message"]
