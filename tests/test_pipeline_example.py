"""The Airflow example's steps (examples/airflow/pipeline_tasks.py) against a running API
(`python -m app` on the local runtime, a real MLflow): the dataset check, train, wait, evaluate
against the champion, deploy or update, promote, smoke-test, as the DAG runs them, without an
Airflow install (examples/airflow/check_dag.sh runs the DAG itself in Airflow)."""

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from app.settings import PROJECT_ROOT
from mlops_client import Client
from tests.platform_support.seaweedfs import REGION, SeaweedFS, random_credentials
from tests.support import regression_csv, wait_until

ADMIN = "admin-token-for-pipeline-tests-0123456789"
PROFILE = "tabular_regression_sklearn"
METRIC = "val_rmse"  # lower is better


def load_pipeline_tasks() -> ModuleType:
    """The module as Airflow imports it: by its name, from the dags folder it sits in."""
    spec = importlib.util.spec_from_file_location("pipeline_tasks", PROJECT_ROOT / "examples/airflow/pipeline_tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline_tasks"] = module
    spec.loader.exec_module(module)
    return module


steps = load_pipeline_tasks()


def houses_csv(path: Path, noise: float = 0.0, shuffle_target: bool = False) -> Path:
    """The shared regression data (price = f0 + 2 f1 + 3 f2 + 3), with extra noise on the target or
    the target shuffled (nothing left to learn): the same features, better or worse runs."""
    regression_csv(path, rows=120, features=3)
    frame = pd.read_csv(path)
    rng = np.random.default_rng(7)
    if shuffle_target:
        frame["price"] = rng.permutation(frame["price"].to_numpy())
    frame["price"] += rng.normal(scale=noise, size=len(frame)) if noise else 0.0
    frame.to_csv(path, index=False)
    return path


def train_body(task_id: str, model_name: str, dataset: Path) -> dict:
    return {"taskId": task_id, "experimentName": model_name, "modelProfile": PROFILE, "customModelName": model_name,
            "datasetPath": str(dataset), "targetColumn": "price", "hyperparameters": {"estimator": "linear"}}


def train_until_finished(client: Client, body: dict) -> str:
    """start_training, then training_finished poked as the DAG's sensor does."""
    task_id = steps.start_training(client, body)
    wait_until(lambda: steps.training_finished(client, task_id), timeout=90, interval=0.5,
               what=f"training task {task_id}")
    return task_id


def failure_of(client: Client, task_id: str) -> Exception | None:
    """The error training_finished raises for a Failed task (None while it runs)."""
    try:
        steps.training_finished(client, task_id)
    except steps.TrainingFailed as failed:
        return failed
    return None


def champion_of(mlflow_uri: str, model_name: str) -> str:
    return MlflowClient(mlflow_uri).get_model_version_by_alias(model_name, steps.CHAMPION_ALIAS).version


def test_the_dataset_check_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such.csv"
    with pytest.raises(FileNotFoundError, match=f"dataset not found: {missing}"):
        steps.check_dataset(str(missing))
    with pytest.raises(FileNotFoundError, match="not a file"):
        steps.check_dataset(str(tmp_path))
    csv = regression_csv(tmp_path / "houses.csv", rows=10, features=3)
    assert steps.check_dataset(str(csv)) == str(csv)
    assert steps.check_dataset(f"file://{csv}") == f"file://{csv}"
    with pytest.raises(ValueError, match="bucket and a key"):
        steps.check_dataset("s3://datasets")

    # s3://: HEAD on the object, on the endpoint from the environment (a real SeaweedFS, the store
    # kubernetes/ deploys).
    credentials = random_credentials()
    store = SeaweedFS(tmp_path / "seaweedfs", credentials).start()
    try:
        for name in steps.S3_ENDPOINT_ENVS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MLOPS_S3_ENDPOINT_URL", store.endpoint)
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        s3 = store.client()
        s3.create_bucket(Bucket="datasets")
        s3.upload_file(str(csv), "datasets", "houses.csv")
        assert steps.check_dataset("s3://datasets/houses.csv") == "s3://datasets/houses.csv"
        with pytest.raises(FileNotFoundError, match=r"dataset not found: s3://datasets/other.csv \(S3 answered 404\)"):
            steps.check_dataset("s3://datasets/other.csv")
        # The smoke test's default rows: the dataset's first rows without the target column.
        expected = pd.read_csv(csv).drop(columns="price").head(2).to_numpy().tolist()
        np.testing.assert_allclose(steps.sample_rows("s3://datasets/houses.csv", "price", count=2), expected)
    finally:
        store.stop()
    np.testing.assert_allclose(steps.sample_rows(str(csv), None, count=2), expected)  # no target named: the last


def test_train_evaluate_deploy_then_skip_a_worse_run_and_update_to_a_better_one(
        api_factory, mlflow_uri: str, tmp_path: Path) -> None:
    api = api_factory(MLOPS_API_TOKENS=f"admin:{ADMIN}")
    model_name = f"pipelineHouses{uuid.uuid4().hex[:8]}"  # MLflow outlives the test: a name of its own
    deployment = "houses-pipeline"
    noisy, shuffled, clean = (houses_csv(tmp_path / "noisy.csv", noise=2.0),
                              houses_csv(tmp_path / "shuffled.csv", shuffle_target=True),
                              houses_csv(tmp_path / "clean.csv"))
    with Client(api.url, ADMIN, retries=60) as client:
        with pytest.raises(ValueError, match="customModelName"):
            steps.start_training(client, {**train_body("no-name", model_name, noisy), "customModelName": None})
        # A training that will fail (no such target column), checked below while the others ran.
        doomed = steps.start_training(client, {**train_body("houses-bad", f"{model_name}Bad", noisy),
                                               "targetColumn": "no_such_column"})

        # The first run: no champion yet, so it wins; deployed, then made the champion.
        first = train_until_finished(client, train_body("houses-1", model_name, steps.check_dataset(str(noisy))))
        verdict = steps.evaluate(client, first, METRIC, False, mlflow_uri)
        assert verdict["decision"] == steps.DEPLOY and verdict["champion_value"] is None
        assert verdict["candidate_version"] == "1" and verdict["candidate_value"] > 0
        assert not steps.deployment_exists(client, deployment)
        deployed = steps.deploy_or_update(client, first, deployment, "houses", PROFILE, timeout=90)
        assert (deployed.revision, deployed.serving_revision) == (1, 1)
        assert (deployed.model.model_name, deployed.model.model_version) == (model_name, "1")
        assert champion_of(mlflow_uri, model_name) == "1"
        rows = steps.sample_rows(str(clean), "price")
        first_predictions = steps.smoke_test(client, deployment, rows)
        assert len(first_predictions) == 3

        # The failed training: the sensor's check raises the API's message instead of waiting on.
        failed = wait_until(lambda: failure_of(client, doomed), timeout=60, interval=0.5, what="houses-bad to fail")
        assert "training task 'houses-bad' failed" in str(failed) and "no_such_column" in str(failed)
        with pytest.raises(steps.PipelineError, match="is Failed, not Succeeded"):
            steps.evaluate(client, doomed, METRIC, False, mlflow_uri)

        # A worse run (the target shuffled): it loses against the champion's metric and is skipped.
        worse = train_until_finished(client, train_body("houses-2", model_name, shuffled))
        verdict = steps.evaluate(client, worse, METRIC, False, mlflow_uri)
        assert verdict["decision"] == steps.SKIP
        assert verdict["champion_version"] == "1" and verdict["candidate_version"] == "2"
        assert verdict["candidate_value"] > verdict["champion_value"]
        # The same values with the direction turned round: the worse run would win.
        assert steps.evaluate(client, worse, METRIC, True, mlflow_uri)["decision"] == steps.DEPLOY
        assert champion_of(mlflow_uri, model_name) == "1"

        # A better run (no extra noise): it wins; the deployment moves to it in a new revision.
        better = train_until_finished(client, train_body("houses-3", model_name, clean))
        verdict = steps.evaluate(client, better, METRIC, False, mlflow_uri)
        assert verdict["decision"] == steps.DEPLOY and verdict["candidate_value"] < verdict["champion_value"]
        updated = steps.deploy_or_update(client, better, deployment, "houses", PROFILE, timeout=90)
        assert (updated.revision, updated.serving_revision) == (2, 2)
        assert updated.model.model_version == "3"
        assert champion_of(mlflow_uri, model_name) == "3"
        newest = client.revisions(deployment)[0]
        assert (newest.revision, newest.state, newest.promoted_alias) == (2, "Serving", "champion")
        # Run again (an Airflow retry): no third revision.
        assert steps.deploy_or_update(client, better, deployment, "houses", PROFILE, timeout=90).revision == 2
        better_predictions = steps.smoke_test(client, deployment, rows)
        truth = [row[0] + 2 * row[1] + 3 * row[2] + 3 for row in rows]
        assert better_predictions == pytest.approx(truth, abs=0.5)
        assert better_predictions != first_predictions


def test_smoke_test_refuses_an_answer_without_a_prediction_per_row() -> None:
    class FakeClient:
        def __init__(self, answer: dict) -> None:
            self.answer = answer

        def predict(self, task_id: str, rows: list) -> dict:
            return self.answer

    with pytest.raises(steps.SmokeTestFailed, match="not one prediction per row"):
        steps.smoke_test(FakeClient({"predictions": [1.0]}), "houses", [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(steps.SmokeTestFailed, match=r"invalid predictions \(row, value\): \[\(1, nan\)\]"):
        steps.smoke_test(FakeClient({"predictions": [1.0, float("nan")]}), "houses", [[1, 2, 3], [4, 5, 6]])
    assert steps.smoke_test(FakeClient({"predictions": ["a", 2]}), "houses", [[1], [2]]) == ["a", 2]
    with pytest.raises(ValueError, match="at least one row"):
        steps.smoke_test(FakeClient({}), "houses", [])
