"""The benchmark's models: an 8-feature regression dataset, a LinearRegression and a
RandomForestRegressor trained by our `sklearn_regressor` handler and logged to MLflow exactly as
the trainer logs them, and the same fitted estimators exported for the peers (an MLflow model
directory for `mlflow models serve`, a joblib file for MLServer and KServe)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np

from models.base import TabularData, TrainContext
from models.sklearn_regressor import SklearnRegressorHandler
from models.spec import HANDLER_TAG, MODEL_ARTIFACT_PATH, PROFILE_TAG

HANDLER = "sklearn_regressor"
N_FEATURES = 8
TRAIN_ROWS = 2000
BATCH_ROWS = 100


@dataclass(frozen=True)
class BenchModel:
    key: str
    title: str
    run_id: str
    mlflow_dir: Path
    joblib_file: Path
    estimator: Any
    rows: np.ndarray  # held-out rows the requests carry: row 0 alone, or the first BATCH_ROWS

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT_PATH}"


def dataset(rows: int = TRAIN_ROWS + BATCH_ROWS, seed: int = 7) -> TabularData:
    """House-price-like data: a linear part and a bump a forest has to learn."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 6, size=(rows, N_FEATURES))
    y = x @ np.array([3.0, 1.5, -2.0, 0.5, 1.0, 2.5, -1.0, 0.8]) + 10 + 4 * np.sin(x[:, 0] * x[:, 1])
    y += rng.normal(0, 0.5, rows)
    return TabularData(x, y, [f"feature_{i}" for i in range(1, N_FEATURES + 1)], "price")


def train_all(tracking_uri: str, profile: str, work: Path, keys: tuple[str, ...]) -> list[BenchModel]:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("benchmarks")
    data = dataset()
    held_out = data.features[TRAIN_ROWS:]
    train = TabularData(data.features[:TRAIN_ROWS], data.target[:TRAIN_ROWS], data.feature_names, data.target_name)
    settings = {
        "linear": ("LinearRegression", {"estimator": "linear"}),
        "forest": ("RandomForestRegressor (100 trees)", {"estimator": "random_forest", "nEstimators": 100}),
    }
    trained = []
    for key in keys:
        title, hyperparameters = settings[key]
        tags = {PROFILE_TAG: profile, HANDLER_TAG: HANDLER}
        with mlflow.start_run(run_name=f"bench-{key}", tags=tags) as run:
            SklearnRegressorHandler().train(train, TrainContext({**hyperparameters, "seed": 42}, "cpu"))
        uri = f"runs:/{run.info.run_id}/{MODEL_ARTIFACT_PATH}"
        target = work / "models" / key
        target.mkdir(parents=True, exist_ok=True)
        mlflow_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(target)))
        estimator = mlflow.sklearn.load_model(str(mlflow_dir))
        joblib_file = target / "model.joblib"
        joblib.dump(estimator, joblib_file)
        trained.append(BenchModel(key, title, run.info.run_id, mlflow_dir, joblib_file, estimator, held_out))
    return trained
