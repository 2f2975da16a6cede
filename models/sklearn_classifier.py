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


# Up to this many rows the boosted trees are walked all at once in numpy; above, one OpenMP thread.
FLAT_TREES_MAX_ROWS = 64


def boosted_trees_proba(model: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """predict_proba with every tree of every iteration walked at once in numpy, one level per step:
    a few numpy calls per request instead of a compiled call per tree (300 for 100 iterations of 3
    classes). The raw score is the baseline plus each class's leaf values, as _raw_predict sums them;
    a split on a missing value goes the way the tree learned. None for categorical splits (their
    bitsets are not walked here) or a model without the private attributes this reads."""
    predictors = getattr(model, "_predictors", None)
    baseline, loss = getattr(model, "_baseline_prediction", None), getattr(model, "_loss", None)
    if not predictors or baseline is None or loss is None:
        return None
    fallback = single_thread_proba(model) or model.predict_proba
    per_class = len(predictors[0])
    left, right, feature, threshold, nan_left, value, klass, roots = [], [], [], [], [], [], [], []
    offset = depth = 0
    for iteration in predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                return None
            own = np.arange(len(nodes)) + offset
            leaf = nodes["is_leaf"].astype(bool)
            # A leaf points to itself, so rows that reach a leaf early stay there while deeper ones go on.
            left.append(np.where(leaf, own, nodes["left"].astype(np.int64) + offset))
            right.append(np.where(leaf, own, nodes["right"].astype(np.int64) + offset))
            feature.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64))
            threshold.append(nodes["num_threshold"].astype(np.float64))
            nan_left.append(nodes["missing_go_to_left"].astype(bool) | leaf)
            value.append(nodes["value"].astype(np.float64))
            klass.append(k)
            roots.append(offset)
            depth = max(depth, int(nodes["depth"].max()))
            offset += len(nodes)
    flat_left, flat_right = np.concatenate(left), np.concatenate(right)
    flat_feature, flat_threshold = np.concatenate(feature), np.concatenate(threshold)
    flat_nan_left, flat_value = np.concatenate(nan_left), np.concatenate(value)
    root_nodes = np.asarray(roots, dtype=np.int64)
    # One column per class: summing a tree's leaf into its class is a matrix product.
    to_class = np.zeros((len(roots), per_class))
    to_class[np.arange(len(roots)), klass] = 1.0
    base = np.asarray(baseline, dtype=np.float64).reshape(1, per_class)

    def proba(rows: np.ndarray) -> np.ndarray:
        if len(rows) > FLAT_TREES_MAX_ROWS:
            return fallback(rows)
        values = np.ascontiguousarray(rows, dtype=np.float64)
        node = np.repeat(root_nodes[:, None], len(values), axis=1)
        row = np.broadcast_to(np.arange(len(values)), node.shape)
        for _ in range(depth):
            x = values[row, flat_feature[node]]
            go_left = np.where(np.isnan(x), flat_nan_left[node], x <= flat_threshold[node])
            node = np.where(go_left, flat_left[node], flat_right[node])
        raw = base + flat_value[node].T @ to_class
        return loss.predict_proba(raw)

    return proba


class ClassifierPredictor:
    def __init__(self, model: HistGradientBoostingClassifier, feature_names: list[str]):
        self.model = model
        self.feature_names = feature_names
        self.n_features = int(model.n_features_in_)
        self.classes = [_json_label(c) for c in model.classes_]
        self.form = "sklearn.predict_proba"
        self._proba: Callable[[np.ndarray], np.ndarray] = model.predict_proba
        for name, build in (("numpy boosted trees", boosted_trees_proba), ("single-thread raw predict",
                                                                             single_thread_proba)):
            fast = build(model)
            if fast is not None and self._agrees(fast):
                self.form, self._proba = name, fast
                break

    def _agrees(self, fast: Callable[[np.ndarray], np.ndarray]) -> bool:
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(SINGLE_THREAD_MAX_ROWS, self.n_features)) * rng.uniform(0.1, 10, self.n_features)
        rows[::7, 0] = np.nan  # the trees' missing-value branches too
        try:
            for batch in (rows[:1], rows[:FLAT_TREES_MAX_ROWS], rows):
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
