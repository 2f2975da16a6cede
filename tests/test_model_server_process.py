"""script/serve.py as an inference container runs it: the model comes from MLflow (runs:/<id>/model,
downloaded by a child process), the trainer's serving bundle serves, and the serving process never
imports scikit-learn, pandas or MLflow; a model that cannot be downloaded is the pod's last words."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from app.settings import PROJECT_ROOT
from models.base import TabularData, TrainContext
from models.compiled_forms import ONNXRUNTIME_FOREST, TOLERANCES
from models.sklearn_regressor import SklearnRegressorHandler
from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, SERVE_SPEC_ENV, TERMINATION_LOG_ENV, ServeSpec
from tests.support import free_port, wait_until


@pytest.fixture(scope="module")
def forest_run(mlflow_uri: str) -> tuple[str, TabularData]:
    """A 10-tree forest trained and logged by the handler, as the trainer does it."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 5, size=(300, 4))
    data = TabularData(x, 20 * np.sin(x[:, 0]) + x[:, 1] * x[:, 2], ["a", "b", "c", "d"], "y")
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("model-server-process")
    try:
        with mlflow.start_run() as run:
            SklearnRegressorHandler().train(data, TrainContext({"estimator": "random_forest", "nEstimators": 10},
                                                               "cpu"))
    finally:
        # set_experiment also sets MLFLOW_EXPERIMENT_ID for child processes: not for the other tests'.
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return run.info.run_id, data


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_env(model_uri: str, mlflow_uri: str, port: int, tmp_path: Path) -> dict[str, str]:
    spec = ServeSpec(task_id="proc", model_id="proc", model_uri=model_uri, model_profile="tabular_regression_sklearn",
                     handler="sklearn_regressor")
    return {**os.environ, SERVE_SPEC_ENV: spec.model_dump_json(), SERVE_HOST_ENV: "127.0.0.1",
            SERVE_PORT_ENV: str(port), TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
            "MLFLOW_TRACKING_URI": mlflow_uri}


def test_the_server_serves_the_bundle_without_scikit_learn_pandas_or_mlflow(
        forest_run, mlflow_uri: str, servers: list, tmp_path: Path) -> None:
    run_id, data = forest_run
    port = free_port()
    process = subprocess.Popen([sys.executable, "script/serve.py"], cwd=PROJECT_ROOT,
                               env=server_env(f"runs:/{run_id}/model", mlflow_uri, port, tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.append(process)

    def ready() -> bool:
        assert process.poll() is None, f"the model server exited with {process.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 90, 0.1, "the model server to load its model")
    metadata = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
    assert metadata["form"] == ONNXRUNTIME_FOREST and metadata["featureNames"] == ["a", "b", "c", "d"]
    assert "formNote" not in metadata
    rows = data.features[:65] + 0.1
    answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"data": {"features": rows.tolist()}}).json()
    model = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    want = model.predict(rows)
    bound = TOLERANCES[ONNXRUNTIME_FOREST].within * max(1.0, float(np.abs(want).max()))
    assert np.abs(np.array(answer["predictions"]) - want).max() <= bound
    # What the serving process holds: no library of scikit-learn, pandas or MLflow's server stack.
    libraries = Path(f"/proc/{process.pid}/maps").read_text()
    assert "onnxruntime" in libraries
    assert not [name for name in ("/sklearn/", "/pandas/", "/pyarrow/") if name in libraries]
    # The download's child has ended: its memory (MLflow's import) is not the server's.
    assert Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().strip() == ""


def test_a_run_that_does_not_exist_is_the_containers_last_words(mlflow_uri: str, tmp_path: Path) -> None:
    env = server_env("runs:/0123456789abcdef0123456789abcdef/model", mlflow_uri, free_port(), tmp_path)
    done = subprocess.run([sys.executable, "script/serve.py"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    words = (tmp_path / "termination-log").read_text()
    assert words.startswith("cannot load model runs:/0123456789abcdef0123456789abcdef/model: ")
    assert "0123456789abcdef0123456789abcdef" in words.split(": ", 1)[1]
    last = json.loads(done.stdout.splitlines()[-1])  # the process's last line, in the log format
    assert (last["level"], last["message"], last["taskId"]) == ("ERROR", f"error: {words}", "proc")
