"""Serving the scikit-learn families (tabular_regression_sklearn, tabular_classification).

A model server builds its predictor from the downloaded MLflow model in one of three ways, fastest
first; `GET /metadata` names the form that serves:
1. The serving bundle the trainer logged (models/serving_bundle.py): the compiled form, checked
   against the framework's answers recorded at training time. Neither scikit-learn nor MLflow is
   imported, so the server starts in about a second and stays small.
2. A model logged without a bundle (any `mlflow.sklearn` model): the framework is loaded through
   MLflow, a compiled form is made from it at load time and kept if it gives the framework's own
   answers on probe rows.
3. Otherwise, or when a bundle disagrees with its recorded answers, the framework's own
   `predict` / `predict_proba`.
"""

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.base import InputError
from models.compiled_forms import Compiled, Runner, Task, compile_classifier, compile_regressor, runner_of
from models.serving_bundle import (
    FormRejected,
    disagreement,
    feature_names,
    find_manifest,
    load_checked,
    read_mlmodel,
)

FRAMEWORK_REGRESSOR = "sklearn.predict"
FRAMEWORK_CLASSIFIER = "sklearn.predict_proba"
# Up to this many rows the framework's fallback predicts on one OpenMP thread: measured here, one
# row of the boosted classifier took 1.4 ms on one thread and over 100 ms on two while the other
# core was busy. Larger batches keep scikit-learn's threads.
FRAMEWORK_SINGLE_THREAD_MAX_ROWS = 512


def json_label(value: Any) -> Any:
    """A class label as JSON has it (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class RegressorPredictor:
    """A single-target regressor: one number per row."""

    run: Runner
    form: str
    n_features: int
    feature_names: list[str] = field(default_factory=list)
    note: str | None = None  # why a faster form does not serve, when one was tried

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        if not np.isfinite(rows).all():
            raise InputError("features must be finite numbers (no NaN or infinity) for this model")
        return {"predictions": np.asarray(self.run(rows), dtype=np.float64).reshape(-1)}


@dataclass
class ClassifierPredictor:
    """Class labels per row, with the probabilities of every class and the classes they refer to."""

    run: Runner  # rows -> probabilities (n, classes)
    form: str
    n_features: int
    classes: list[Any]
    feature_names: list[str] = field(default_factory=list)
    allows_missing: bool = True
    note: str | None = None

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        if np.isinf(rows).any():
            raise InputError("features must not be infinite")
        if not self.allows_missing and np.isnan(rows).any():
            raise InputError("features must not be missing (NaN) for this model")
        probabilities = self.run(rows)
        labels = [self.classes[i] for i in probabilities.argmax(axis=1)]
        return {"predictions": labels, "probabilities": probabilities.tolist(), "classes": self.classes}


def generated_probes(n_features: int, example: np.ndarray | None, count: int = 256, seed: int = 0) -> np.ndarray:
    """Probe rows for a model logged without recorded ones: standard normal rows, and rows around
    the logged input example's scale when there is one."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(count, n_features)) * rng.uniform(0.1, 10, n_features)]
    if example is not None and example.ndim == 2 and example.shape[1] == n_features and len(example):
        center = example.mean(axis=0)
        spread = np.where(example.std(axis=0) > 0, example.std(axis=0), np.abs(center) + 1.0)
        rows += [example, center + 2.0 * spread * rng.normal(size=(count, n_features))]
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float64)


def _compiled_runner(compile_model: Callable[[Any], Compiled | None], model: Any, task: Task,
                     rows: np.ndarray, answers: np.ndarray) -> tuple[str, Runner] | str:
    """Compile the live model and check the form on the rows: (form, runner), or why not."""
    try:
        compiled = compile_model(model)
        if compiled is None:
            return "no compiler fits this model"
        with tempfile.TemporaryDirectory(prefix="mlops-form-") as folder:
            run = runner_of(compiled, task, Path(folder))
    except Exception as exc:
        return f"compiling failed: {type(exc).__name__}: {exc}"
    problem = disagreement(run, compiled.form, rows, answers)
    return problem if problem else (compiled.form, run)


def regressor_from_model(model: Any, names: list[str], example: np.ndarray | None = None,
                         compile_now: bool = True, note: str | None = None) -> RegressorPredictor:
    """A fitted scikit-learn regressor: a form compiled now if it agrees with `predict` on probe rows,
    else `predict` itself. `compile_now=False` serves the framework (a bundle disagreed)."""
    n_features = int(model.n_features_in_)
    if compile_now:
        rows = generated_probes(n_features, example)
        outcome = _compiled_runner(compile_regressor, model, "regression", rows,
                                   np.asarray(model.predict(rows), dtype=np.float64).reshape(-1))
        if not isinstance(outcome, str):
            return RegressorPredictor(outcome[1], outcome[0], n_features, names)
        note = outcome
    return RegressorPredictor(model.predict, FRAMEWORK_REGRESSOR, n_features, names, note)


def _framework_proba(model: Any) -> Runner:
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()

    def proba(rows: np.ndarray) -> np.ndarray:
        if len(rows) > FRAMEWORK_SINGLE_THREAD_MAX_ROWS:
            return model.predict_proba(rows)
        with controller.limit(limits=1, user_api="openmp"):
            return model.predict_proba(rows)

    return proba


def _accepts_missing(model: Any, rows: np.ndarray) -> bool:
    try:
        model.predict_proba(rows)
    except ValueError:  # scikit-learn's refusal of NaN for models that do not route missing values
        return False
    return True


def classifier_from_model(model: Any, names: list[str], compile_now: bool = True,
                          note: str | None = None) -> ClassifierPredictor:
    """A fitted scikit-learn classifier: a form compiled now if it agrees with `predict_proba` on
    probe rows (with missing values where the model takes them), else `predict_proba` itself."""
    n_features = int(model.n_features_in_)
    classes = [json_label(c) for c in model.classes_]
    rows = generated_probes(n_features, None)
    holes = rows.copy()
    holes[::7, 0] = np.nan  # the trees' missing-value branches too
    allows_missing = _accepts_missing(model, holes[:7])
    if compile_now:
        probes = holes if allows_missing else rows
        outcome = _compiled_runner(compile_classifier, model, "classification", probes,
                                   np.asarray(model.predict_proba(probes), dtype=np.float64))
        if not isinstance(outcome, str):
            return ClassifierPredictor(outcome[1], outcome[0], n_features, classes, names, allows_missing)
        note = outcome
    return ClassifierPredictor(_framework_proba(model), FRAMEWORK_CLASSIFIER, n_features, classes, names,
                               allows_missing, note)


def load_framework(model_dir: Path) -> Any:
    """The scikit-learn model through MLflow's flavour (skops, or a pickle for models logged so)."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(str(model_dir))


def input_example(model_dir: Path) -> np.ndarray | None:
    import mlflow.models

    try:
        loaded = mlflow.models.Model.load(str(model_dir)).load_input_example(str(model_dir))
        return np.asarray(loaded, dtype=np.float64) if loaded is not None else None
    except Exception:  # a model logged without an example (or with a frame of strings)
        return None


def _from_bundle(model_dir: Path, task: Task) -> tuple[dict[str, Any], Any, str | None]:
    """(MLmodel, (manifest, runner) or None, why the bundle does not serve)."""
    mlmodel = read_mlmodel(model_dir)
    manifest_path = find_manifest(model_dir, mlmodel)
    if manifest_path is None:
        return mlmodel, None, None
    try:
        return mlmodel, load_checked(manifest_path, task), None
    except FormRejected as exc:
        logging.getLogger("mlops.model_server").warning("serving bundle not used: %s; loading the framework", exc)
        return mlmodel, None, f"serving bundle not used: {exc}"


def load_regressor(model_dir: Path) -> RegressorPredictor:
    mlmodel, checked, note = _from_bundle(model_dir, "regression")
    names = feature_names(mlmodel)
    if checked is not None:
        manifest, run = checked
        return RegressorPredictor(run, manifest.form, manifest.n_features, names)
    model = load_framework(model_dir)
    # A bundle that disagreed is not compiled again: the framework serves, as the check decided.
    return regressor_from_model(model, names, input_example(model_dir), compile_now=note is None, note=note)


def load_classifier(model_dir: Path) -> ClassifierPredictor:
    mlmodel, checked, note = _from_bundle(model_dir, "classification")
    names = feature_names(mlmodel)
    if checked is not None:
        manifest, run = checked
        if len(manifest.classes) >= 2:
            return ClassifierPredictor(run, manifest.form, manifest.n_features, list(manifest.classes), names,
                                       manifest.allows_missing)
        note = "serving bundle not used: it names fewer than two classes"
    model = load_framework(model_dir)
    return classifier_from_model(model, names, compile_now=note is None, note=note)


class RegressorServing:
    """The serving half of models.sklearn_regressor's handler, without its training imports."""

    def preload(self) -> None:
        """Import, while the model downloads, the runtime of the form this family's trainer logs for
        its slow model (a forest: ONNX Runtime); a linear model does not need it and pays ~15 MiB."""
        import onnxruntime  # noqa: F401

    def load(self, model_dir: str, device: str) -> RegressorPredictor:
        return load_regressor(Path(model_dir))


class ClassifierServing:
    """The serving half of models.sklearn_classifier's handler, without its training imports."""

    def preload(self) -> None:
        """Import, while the model downloads, the runtime of the form this family's trainer logs."""
        import treelite.gtil  # noqa: F401

    def load(self, model_dir: str, device: str) -> ClassifierPredictor:
        return load_classifier(Path(model_dir))
