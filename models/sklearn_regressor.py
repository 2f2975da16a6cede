"""tabular_regression_sklearn: scikit-learn regressors (linear regression, random forest) on CSV data.

Logged with mlflow.sklearn (skops), so a plain MLflow scikit-learn regressor serves too. At load
time the predictor prepares a numpy form of the model (linear: `x @ coef + intercept`; forest:
the trees' node arrays) and keeps it only if it matches scikit-learn's own `predict` on probe
rows; otherwise it calls `predict`. scikit-learn spends more time checking one row than the
arithmetic takes, and a forest's `predict` adds a joblib dispatch per call.
"""

import json
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from models.base import InputError, TabularData, TrainContext, TrainingError
from models.datasets import TabularHandler, split
from models.sklearn_logging import log_sklearn_model

# skops loads only the types it is told to trust beyond its safe defaults: a forest's trees.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
ESTIMATORS = ("linear", "random_forest")
# Up to this many rows the forest walks all its trees at once in numpy; above, tree by tree
# (each tree's compiled predict), which is cheaper when the per-call overhead is amortised.
FLAT_FOREST_MAX_ROWS = 32

Form = Callable[[np.ndarray], np.ndarray]


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
        print(json.dumps({"message": "trained", "estimator": estimator,
                          **{k: round(v, 6) for k, v in metrics.items()}}), flush=True)
        log_sklearn_model(model, data, context, TRUSTED_TYPES)
        return metrics

    def load(self, model_uri: str, device: str) -> "RegressorPredictor":
        local = mlflow.artifacts.download_artifacts(model_uri)
        meta = mlflow.models.Model.load(local)
        model = mlflow.sklearn.load_model(local)
        example = None
        try:
            loaded = meta.load_input_example(local)
            example = np.asarray(loaded, dtype=np.float64) if loaded is not None else None
        except Exception:  # a model logged without an example (or with a frame of strings)
            example = None
        return RegressorPredictor(model, list((meta.metadata or {}).get("feature_names", [])), example)


def probe_rows(n_features: int, example: np.ndarray | None, count: int = 256, seed: int = 0) -> np.ndarray:
    """Rows to check a fast form on: around the logged input example's scale, plus standard normal ones."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(count, n_features))]
    if example is not None and example.ndim == 2 and example.shape[1] == n_features and len(example):
        center = example.mean(axis=0)
        spread = np.where(example.std(axis=0) > 0, example.std(axis=0), np.abs(center) + 1.0)
        rows += [example, center + 2.0 * spread * rng.normal(size=(count, n_features))]
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float64)


def matches(fast: Form, reference: Form, rows: np.ndarray) -> bool:
    """Whether the fast form gives the framework's answer on these rows (to rounding)."""
    try:
        got = np.asarray(fast(rows), dtype=np.float64)
        want = np.asarray(reference(rows), dtype=np.float64).reshape(-1)
    except Exception:
        return False
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-9, atol=1e-9 * scale))


def linear_form(model: Any) -> Form | None:
    """`x @ coef + intercept`, for a single-target linear model (what LinearModel.predict computes)."""
    coef = getattr(model, "coef_", None)
    intercept = getattr(model, "intercept_", None)
    if coef is None or intercept is None or np.ndim(coef) != 1 or np.ndim(intercept) != 0:
        return None
    weights = np.ascontiguousarray(coef, dtype=np.float64)
    bias = float(intercept)
    return lambda rows: rows @ weights + bias


def forest_form(model: Any) -> Form | None:
    """A single-target forest of regression trees, walked in numpy: all trees and rows advance one
    level per step (small batches), or each tree's compiled predict in turn (large batches)."""
    estimators = getattr(model, "estimators_", None)
    if not isinstance(model, RandomForestRegressor) or not estimators or getattr(model, "n_outputs_", 1) != 1:
        return None
    trees = [estimator.tree_ for estimator in estimators]
    offsets = np.cumsum([0] + [tree.node_count for tree in trees])
    # A leaf points to itself, so rows that reach a leaf early stay there while deeper ones go on.
    left, right, feature, threshold, value = [], [], [], [], []
    for tree, offset in zip(trees, offsets[:-1], strict=True):
        own = np.arange(tree.node_count) + offset
        leaf = tree.children_left < 0
        left.append(np.where(leaf, own, tree.children_left + offset))
        right.append(np.where(leaf, own, tree.children_right + offset))
        feature.append(np.where(leaf, 0, tree.feature))
        threshold.append(np.where(leaf, np.inf, tree.threshold))
        value.append(tree.value[:, 0, 0])
    flat_left, flat_right = np.concatenate(left), np.concatenate(right)
    flat_feature, flat_threshold = np.concatenate(feature), np.concatenate(threshold)
    flat_value = np.concatenate(value)
    roots = offsets[:-1].astype(np.int64)
    depth = max(tree.max_depth for tree in trees)
    count = float(len(trees))

    def walk_all(rows32: np.ndarray) -> np.ndarray:
        values = rows32.astype(np.float64)  # a tree compares the float32 value with a float64 threshold
        node = np.repeat(roots[:, None], len(rows32), axis=1)
        row = np.broadcast_to(np.arange(len(rows32)), node.shape)
        for _ in range(depth):
            go_left = values[row, flat_feature[node]] <= flat_threshold[node]
            node = np.where(go_left, flat_left[node], flat_right[node])
        return flat_value[node].sum(axis=0) / count

    def tree_by_tree(rows32: np.ndarray) -> np.ndarray:
        total = np.zeros(len(rows32))
        for tree in trees:
            total += tree.predict(rows32).reshape(len(rows32), -1)[:, 0]
        return total / count

    def predict(rows: np.ndarray) -> np.ndarray:
        # The forest predicts on float32 features, as scikit-learn converts them; too large a value
        # becomes infinite (refused below, as scikit-learn refuses it).
        with np.errstate(over="ignore"):
            rows32 = np.ascontiguousarray(rows, dtype=np.float32)
        if not np.isfinite(rows32).all():
            raise InputError("features must fit in float32 for this model (|value| < 3.4e38)")
        return walk_all(rows32) if len(rows32) <= FLAT_FOREST_MAX_ROWS else tree_by_tree(rows32)

    return predict


class RegressorPredictor:
    """Any single-target scikit-learn regressor; a checked numpy form when one fits the model."""

    def __init__(self, model: Any, feature_names: list[str], example: np.ndarray | None = None):
        self.model = model
        self.feature_names = feature_names
        self.n_features = int(model.n_features_in_)
        self.form = "sklearn.predict"
        self._predict: Form = model.predict
        rows = probe_rows(self.n_features, example)
        for name, build in (("numpy linear", linear_form), ("numpy forest", forest_form)):
            fast = build(model)
            # Small and large batches: the forest form changes strategy with the batch size.
            small = rows[:FLAT_FOREST_MAX_ROWS]
            if fast is not None and matches(fast, model.predict, small) and matches(fast, model.predict, rows):
                self.form, self._predict = name, fast
                break

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        if not np.isfinite(rows).all():
            raise InputError("features must be finite numbers (no NaN or infinity) for this model")
        return {"predictions": np.asarray(self._predict(rows), dtype=np.float64).reshape(-1)}
