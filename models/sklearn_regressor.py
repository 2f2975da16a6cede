"""tabular_regression_sklearn: scikit-learn regressors (linear regression, random forest) on CSV data.

Logged with mlflow.sklearn (skops), so a plain MLflow scikit-learn regressor serves too, with the
serving bundle beside it: the linear model's coefficients, or the forest compiled by skl2onnx for
ONNX Runtime, with probe rows and scikit-learn's answers on them (models/serving_bundle.py). The
model server serves that form without importing scikit-learn (models/tabular_serving.py).
"""

from pathlib import Path

import mlflow
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from models.base import TabularData, TrainContext, TrainingError
from models.datasets import TabularHandler, split
from models.logs import event
from models.sklearn_logging import log_sklearn_model
from models.tabular_serving import RegressorPredictor, load_regressor

ESTIMATORS = ("linear", "random_forest")


class SklearnRegressorHandler(TabularHandler):
    def train(self, data: TabularData, context: TrainContext) -> dict[str, float]:
        hp = context.hyperparameters
        if context.initial_model_uri:
            raise TrainingError("initialModelFilePath is not supported by this profile; leave it empty")
        estimator = str(hp.get("estimator", "linear"))
        if estimator not in ESTIMATORS:
            raise TrainingError(f"estimator must be one of {', '.join(ESTIMATORS)}; got '{estimator}'")
        seed = int(hp.get("seed", 42))
        if estimator == "linear":
            model: LinearRegression | RandomForestRegressor = LinearRegression()
        else:
            model = RandomForestRegressor(
                n_estimators=int(hp.get("nEstimators", 100)),
                max_depth=int(hp.get("maxDepth", 0)) or None,
                random_state=seed,
            )
        train_idx, val_idx = split(data, float(hp.get("validationFraction", 0.2)), seed)
        model.fit(data.features[train_idx], data.target[train_idx])
        metrics: dict[str, float] = {}
        for prefix, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                predicted = model.predict(data.features[idx])
                actual = data.target[idx].astype(np.float64)
                metrics[f"{prefix}_rmse"] = float(np.sqrt(mean_squared_error(actual, predicted)))
                metrics[f"{prefix}_mae"] = float(mean_absolute_error(actual, predicted))
                if len(idx) > 1 and np.var(actual) > 0:
                    metrics[f"{prefix}_r2"] = float(r2_score(actual, predicted))
        mlflow.log_metrics(metrics)
        event("trained", estimator=estimator, **{k: round(v, 6) for k, v in metrics.items()})
        log_sklearn_model(model, data, context, "regression")
        return metrics

    def load(self, model_dir: str, device: str) -> RegressorPredictor:
        return load_regressor(Path(model_dir))
