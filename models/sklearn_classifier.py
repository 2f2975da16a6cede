"""tabular_classification: scikit-learn's histogram gradient boosting classifier.

Predictions are the class labels as they appear in the dataset; probabilities come with them.
"""

import json
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, f1_score, log_loss

from models.base import InputError, TabularData, TrainContext, TrainingError
from models.datasets import TabularHandler, split
from models.sklearn_logging import log_sklearn_model

# MLflow saves scikit-learn models with skops (no arbitrary pickle). skops asks to name the types
# a file may hold beyond its safe defaults: this model's tree predictors, written by our trainer.
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def _json_label(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class HistGradientBoostingClassifierHandler(TabularHandler):
    categorical_target = True
    allows_missing_features = True  # the trees route missing values natively

    def train(self, data: TabularData, context: TrainContext) -> dict[str, float]:
        hp = context.hyperparameters
        classes = np.unique(data.target.astype(str))
        if len(classes) < 2:
            raise TrainingError(
                f"target column '{data.target_name}' has a single class ({classes[0]}); need two or more"
            )
        train_idx, val_idx = split(data, float(hp["validationFraction"]), int(hp["seed"]))
        model = HistGradientBoostingClassifier(
            max_iter=int(hp["numEpoch"]),
            learning_rate=float(hp["learningRate"]),
            max_leaf_nodes=int(hp["maxLeafNodes"]),
            max_depth=int(hp["maxDepth"]) or None,
            random_state=int(hp["seed"]),
            early_stopping=False,
        )
        if context.initial_model_uri:
            raise TrainingError("initialModelFilePath is not supported by tabular_classification; leave it empty")
        model.fit(data.features[train_idx], data.target[train_idx])
        metrics: dict[str, float] = {"n_iter": float(model.n_iter_)}
        for prefix, idx in (("train", train_idx), ("val", val_idx)):
            if len(idx):
                metrics |= self._metrics(prefix, model, data.features[idx], data.target[idx])
        # Per-iteration training loss, so the run shows a curve like the MLP's epochs.
        for step, loss in enumerate(model.train_score_[1:], start=1):
            mlflow.log_metric("train_neg_log_loss", float(loss), step=step, synchronous=False)
        mlflow.log_metrics(metrics)
        print(json.dumps({"message": "trained", **{k: round(v, 6) for k, v in metrics.items()}}), flush=True)
        log_sklearn_model(model, data, context, TRUSTED_TYPES)
        return metrics

    @staticmethod
    def _metrics(prefix: str, model: HistGradientBoostingClassifier, x: np.ndarray, y: np.ndarray) -> dict:
        predicted = model.predict(x)
        metrics = {
            f"{prefix}_accuracy": float(accuracy_score(y, predicted)),
            f"{prefix}_f1_macro": float(f1_score(y, predicted, average="macro")),
        }
        if set(np.unique(y)) <= set(model.classes_):
            metrics[f"{prefix}_log_loss"] = float(log_loss(y, model.predict_proba(x), labels=model.classes_))
        return metrics

    def load(self, model_uri: str, device: str) -> "ClassifierPredictor":
        local = mlflow.artifacts.download_artifacts(model_uri)
        metadata = mlflow.models.Model.load(local).metadata or {}
        return ClassifierPredictor(mlflow.sklearn.load_model(local), list(metadata.get("feature_names", [])))


# Up to this many rows a request is predicted on one thread. The trees' OpenMP threads cost more
# than they save on a few rows, and far more on a busy machine: measured here, one row took 1.4 ms
# on one thread and over 100 ms with two while the other core was busy.
SINGLE_THREAD_MAX_ROWS = 512


def single_thread_proba(model: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """predict_proba with one OpenMP thread (the same arithmetic, through scikit-learn's private
    _raw_predict, so it is checked against predict_proba before use); None if the model has no such path."""
    raw_predict, loss = getattr(model, "_raw_predict", None), getattr(model, "_loss", None)
    if raw_predict is None or loss is None:
        return None

    def proba(rows: np.ndarray) -> np.ndarray:
        if len(rows) > SINGLE_THREAD_MAX_ROWS:
            return model.predict_proba(rows)
        return loss.predict_proba(raw_predict(rows, n_threads=1))

    return proba


class ClassifierPredictor:
    def __init__(self, model: HistGradientBoostingClassifier, feature_names: list[str]):
        self.model = model
        self.feature_names = feature_names
        self.n_features = int(model.n_features_in_)
        self.classes = [_json_label(c) for c in model.classes_]
        self.form = "sklearn.predict_proba"
        self._proba: Callable[[np.ndarray], np.ndarray] = model.predict_proba
        fast = single_thread_proba(model)
        if fast is not None and self._agrees(fast):
            self.form, self._proba = "single-thread raw predict", fast

    def _agrees(self, fast: Callable[[np.ndarray], np.ndarray]) -> bool:
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(SINGLE_THREAD_MAX_ROWS, self.n_features)) * rng.uniform(0.1, 10, self.n_features)
        rows[::7, 0] = np.nan  # the trees' missing-value branches too
        try:
            for batch in (rows[:1], rows):
                got, want = fast(batch), self.model.predict_proba(batch)
                if got.shape != want.shape or not np.allclose(got, want, rtol=1e-12, atol=1e-15):
                    return False
        except Exception:
            return False
        return True

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        if np.isinf(rows).any():
            raise InputError("features must not be infinite")
        probabilities = self._proba(rows)
        labels = [self.classes[i] for i in probabilities.argmax(axis=1)]
        return {"predictions": labels, "probabilities": probabilities.tolist(), "classes": self.classes}
