"""Fixtures: one real MLflow server for the session, and API processes on the local runtime."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import embedded_mlflow
from app.settings import PROJECT_ROOT
from models.spec import TRAIN_SPEC_ENV, TrainSpec
from tests.fake_kube.runtime import fake, loop, runtime
from tests.support import ApiProcess, free_port, kill_workloads, regression_csv

# The Kubernetes runtime tests' fixtures, shared: a fake API, an event loop thread, a runtime on them.
__all__ = ["fake", "loop", "runtime"]

# The longest files, first. `make test` runs each file on one of two workers (--dist loadfile), so
# the suite ends when its last long file does: started first, they run beside the many short ones.
LONGEST_FIRST = ("test_llm_serving.py", "test_rollout_local.py", "test_pipeline_example.py", "test_llm_training.py",
                 "test_client.py", "test_e2e_local.py", "test_security.py", "test_s3_datasets.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("mlflow")
    uri, process = embedded_mlflow.start(data_dir, free_port())
    yield uri
    if process is not None:
        embedded_mlflow.stop(process)


@pytest.fixture(scope="session")
def trained_run_id(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> str:
    """A trained tabular_regression run, made by the trainer as a Job would run it."""
    csv = regression_csv(tmp_path_factory.mktemp("trained") / "data.csv", rows=200)
    spec = TrainSpec(task_id="reliability-train", experiment_name="reliability", model_profile="tabular_regression",
                     handler="torch_mlp_regressor", dataset_path=str(csv),
                     hyperparameters={"numEpoch": 20, "learningRate": 0.01, "numBatch": 32, "hiddenUnits": 32,
                                      "hiddenLayers": 2, "validationFraction": 0.2, "seed": 1})
    env = {**os.environ, TRAIN_SPEC_ENV: spec.model_dump_json(), "MLFLOW_TRACKING_URI": mlflow_uri}
    result = subprocess.run([sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    started = next(json.loads(line) for line in result.stdout.splitlines() if '"run started"' in line)
    return started["runId"]


@pytest.fixture
def api_factory(tmp_path: Path, mlflow_uri: str) -> Iterator:
    """Start API processes on one data directory; every workload they made is stopped afterwards."""
    started: list[ApiProcess] = []
    data_dir = tmp_path / "data"

    def start(**extra_env: str) -> ApiProcess:
        api = ApiProcess(data_dir, mlflow_uri, extra_env).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()
    kill_workloads(data_dir)


@pytest.fixture
def api(api_factory) -> ApiProcess:
    return api_factory()


@pytest.fixture
def model_servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Model-server processes a test starts as the kubelet would; stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
