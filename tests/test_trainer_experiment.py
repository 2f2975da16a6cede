"""The trainer's run lands in the task's experiment even when another trainer creates that
experiment at the same moment (two tasks of a new experiment started together)."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from app.settings import PROJECT_ROOT
from models.spec import TASK_ID_TAG, TRAIN_SPEC_ENV, TrainSpec
from tests.mlflow_proxy import TrackingProxy
from tests.support import regression_csv


@pytest.fixture
def late_tracking_server(mlflow_uri: str) -> Iterator[str]:
    """MLflow's REST API as a trainer sees it when it loses the race: its first lookup of an
    experiment by name misses, although another trainer has just created it, so its create then
    fails with RESOURCE_ALREADY_EXISTS. Every other call goes to the real server."""
    proxy = TrackingProxy(mlflow_uri, miss_first_lookup=True)
    yield proxy.uri
    proxy.close()
    assert proxy.missed, "the trainer never looked its experiment up by name"


def test_a_trainer_that_loses_the_race_to_create_its_experiment_still_runs_in_it(
    mlflow_uri: str, late_tracking_server: str, tmp_path: Path
) -> None:
    mlflow = MlflowClient(mlflow_uri)
    experiment_id = mlflow.create_experiment("created-by-another-trainer")
    spec = TrainSpec(task_id="race-train", experiment_name="created-by-another-trainer",
                     model_profile="tabular_regression", handler="torch_mlp_regressor",
                     dataset_path=str(regression_csv(tmp_path / "data.csv", rows=60)),
                     hyperparameters={"numEpoch": 1, "learningRate": 0.01, "numBatch": 16, "hiddenUnits": 4,
                                      "hiddenLayers": 1, "validationFraction": 0.2, "seed": 1})
    env = {**os.environ, TRAIN_SPEC_ENV: spec.model_dump_json(), "MLFLOW_TRACKING_URI": late_tracking_server}
    result = subprocess.run([sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = next(json.loads(line) for line in result.stdout.splitlines() if '"run started"' in line)["runId"]
    run = mlflow.get_run(run_id)
    assert run.info.experiment_id == experiment_id
    assert run.data.tags[TASK_ID_TAG] == "race-train"
