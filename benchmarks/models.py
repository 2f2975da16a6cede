"""The benchmark's models, trained by our own handlers and logged to MLflow exactly as the trainer
logs them: a LinearRegression and a RandomForestRegressor (handler `sklearn_regressor`, also
exported for the peers: the MLflow model directory for `mlflow models serve`, a joblib file for
MLServer and KServe), and the histogram gradient boosting classifier of the
tabular_classification profile (exported the same way; the answers compared are its labels)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import yaml

from models import HANDLERS
from models.base import TabularData, TrainContext
from models.compiled_forms import ONNXRUNTIME_FOREST, TOLERANCES
from models.sklearn_classifier import HistGradientBoostingClassifierHandler
from models.sklearn_regressor import SklearnRegressorHandler
from models.spec import HANDLER_TAG, MODEL_ARTIFACT_PATH, PROFILE_TAG

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REGRESSOR_HANDLER = "sklearn_regressor"
CLASSIFIER_HANDLER = "sklearn_hgb_classifier"
N_FEATURES = 8
TRAIN_ROWS = 2000
BATCH_ROWS = 100


class SetupError(Exception):
    """The project is not ready for this benchmark; the message says what to change."""


@dataclass(frozen=True)
class BenchModel:
    key: str
    title: str
    handler: str
    profile: str
    run_id: str
    mlflow_dir: Path
    joblib_file: Path
    estimator: Any
    rows: np.ndarray  # held-out rows the requests carry: row 0 alone, or the first BATCH_ROWS
    peers: bool  # whether the peers serve it too

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT_PATH}"

    def agrees(self, predictions: list[Any], rows: np.ndarray) -> bool:
        """Whether a server's predictions are scikit-learn's own for these rows: numbers within the
        float32 tolerance of our ONNX Runtime forest (the loosest of our compiled forms), labels equal."""
        want = self.estimator.predict(rows)
        if want.dtype.kind in "fiu":
            got = np.asarray(predictions, dtype=np.float64).reshape(-1)
            return TOLERANCES[ONNXRUNTIME_FOREST].excess(got, want.astype(np.float64)) is None
        return list(predictions) == want.tolist()


def profile_for(handler: str, profiles_path: Path = PROJECT_ROOT / "model_profiles.yaml") -> str:
    """The profile in model_profiles.yaml that serves with this handler."""
    if handler not in HANDLERS:
        raise SetupError(f"the '{handler}' handler is not registered: add \"{handler}\": "
                         "\"models.sklearn_regressor:SklearnRegressorHandler\" to HANDLERS in models/__init__.py")
    for name, profile in yaml.safe_load(profiles_path.read_text())["profiles"].items():
        if profile.get("handler") == handler:
            return name
    raise SetupError(f"no profile in {profiles_path} uses handler '{handler}'; add one")


def regression_data(rows: int, seed: int = 7) -> TabularData:
    """House-price-like data: a linear part and a bump a forest has to learn."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 6, size=(rows, N_FEATURES))
    y = x @ np.array([3.0, 1.5, -2.0, 0.5, 1.0, 2.5, -1.0, 0.8]) + 10 + 4 * np.sin(x[:, 0] * x[:, 1])
    y += rng.normal(0, 0.5, rows)
    return TabularData(x, y, [f"feature_{i}" for i in range(1, N_FEATURES + 1)], "price")


def classification_data(rows: int, seed: int = 8) -> TabularData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    y = np.where(x[:, 0] + x[:, 3] > 0.7, "setosa", np.where(x[:, 1] * x[:, 2] > 0, "versicolor", "virginica"))
    return TabularData(x, y, [f"m{i}" for i in range(N_FEATURES)], "species")


@dataclass(frozen=True)
class Recipe:
    title: str
    handler: str
    make: Callable[[], Any]
    hyperparameters: dict[str, Any]
    data: Callable[[int], TabularData]
    peers: bool


RECIPES: dict[str, Recipe] = {
    "linear": Recipe("LinearRegression", REGRESSOR_HANDLER, SklearnRegressorHandler,
                     {"estimator": "linear", "seed": 42}, regression_data, True),
    "forest": Recipe("RandomForestRegressor (100 trees)", REGRESSOR_HANDLER, SklearnRegressorHandler,
                     {"estimator": "random_forest", "nEstimators": 100, "seed": 42}, regression_data, True),
    "classifier": Recipe("HistGradientBoostingClassifier (100 iterations, 3 classes)", CLASSIFIER_HANDLER,
                         HistGradientBoostingClassifierHandler,
                         {"numEpoch": 100, "learningRate": 0.1, "maxLeafNodes": 31, "maxDepth": 0,
                          "validationFraction": 0.2, "seed": 42}, classification_data, True),
}


def train_all(tracking_uri: str, work: Path, keys: tuple[str, ...]) -> list[BenchModel]:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("benchmarks")
    trained = []
    for key in keys:
        recipe = RECIPES[key]
        profile = profile_for(recipe.handler)
        data = recipe.data(TRAIN_ROWS + BATCH_ROWS)
        train = TabularData(data.features[:TRAIN_ROWS], data.target[:TRAIN_ROWS], data.feature_names,
                            data.target_name)
        with mlflow.start_run(run_name=f"bench-{key}", tags={PROFILE_TAG: profile, HANDLER_TAG: recipe.handler}) as run:
            recipe.make().train(train, TrainContext(recipe.hyperparameters, "cpu"))
        uri = f"runs:/{run.info.run_id}/{MODEL_ARTIFACT_PATH}"
        target = work / "models" / key
        target.mkdir(parents=True, exist_ok=True)
        mlflow_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(target)))
        estimator = mlflow.sklearn.load_model(str(mlflow_dir))
        joblib_file = target / "model.joblib"
        joblib.dump(estimator, joblib_file)
        trained.append(BenchModel(key, recipe.title, recipe.handler, profile, run.info.run_id, mlflow_dir,
                                  joblib_file, estimator, data.features[TRAIN_ROWS:], recipe.peers))
    return trained
