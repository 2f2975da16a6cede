"""Compiled forms of fitted scikit-learn models: what a model compiler makes of one, and how the
model server runs it without importing scikit-learn.

| form | made by | run by | arithmetic | checked within |
| --- | --- | --- | --- | --- |
| `numpy linear` | the model's public `coef_` and `intercept_` | numpy, `x @ coef + intercept` | float64 | 1e-9 |
| `onnxruntime forest` | skl2onnx (ONNX `TreeEnsembleRegressor`) | ONNX Runtime, one thread | float32 | 1e-5 |
| `treelite trees` | treelite's scikit-learn importer | treelite GTIL, one thread | float64, softmax float32 | 1e-6 |

"Checked within": the largest difference allowed between a form's answer and the framework's
on probe rows, relative to max(1, the largest answer); see `Tolerance`. ONNX Runtime's tree
ensembles compare float32 features with float32 thresholds and sum float32 leaves: seven
significant digits, of which a 100-tree sum loses about one. Treelite keeps scikit-learn's float64
thresholds and leaves; its multiclass softmax rounds to float32 (differences of 6e-8 seen).

Which compiler for which model was measured here (2 busy cores, one thread, per call):
RandomForestRegressor of 100 trees, 8 features: ONNX Runtime 7 us for one row and 1.1 ms for 100,
treelite 48 to 62 us and 3.9 ms. HistGradientBoostingClassifier of 100 iterations and 3 classes:
treelite 50 to 90 us and 3.5 ms; skl2onnx 1.20 cannot convert it with this onnx and protobuf
(it hands protobuf numpy booleans for `nodes_missing_value_tracks_true`).

Imports of skl2onnx, ONNX Runtime and treelite happen on first use, so the model server loads
only the runtime its model needs.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.base import InputError

Task = Literal["regression", "classification"]
# rows (n, n_features) float64 -> predictions (n,) for a regressor, probabilities (n, classes) for a classifier
Runner = Callable[[np.ndarray], np.ndarray]

NUMPY_LINEAR = "numpy linear"
ONNXRUNTIME_FOREST = "onnxruntime forest"
TREELITE_TREES = "treelite trees"


@dataclass(frozen=True)
class Tolerance:
    """A form agrees with the framework when |form - framework| <= within * max(1, max |framework|)
    on every probe row: one bound for the whole answer, so that answers near zero of a model whose
    answers are large are held to the precision of the large ones."""

    within: float

    def excess(self, got: np.ndarray, want: np.ndarray) -> str | None:
        """None when `got` agrees with `want`, else what is wrong with it."""
        if got.shape != want.shape:
            return f"answers of shape {got.shape} where the framework's have shape {want.shape}"
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        error = float(np.max(np.abs(got - want))) if want.size else 0.0
        if not error <= self.within * scale:  # also catches NaN
            return f"differs by up to {error:.3g}, more than the {self.within:g} x {scale:.3g} allowed"
        return None


TOLERANCES: dict[str, Tolerance] = {
    NUMPY_LINEAR: Tolerance(1e-9),  # float64; only the order of the sum differs
    ONNXRUNTIME_FOREST: Tolerance(1e-5),  # float32 thresholds and sums
    TREELITE_TREES: Tolerance(1e-6),  # float64 trees, float32 softmax
}


@dataclass(frozen=True)
class Compiled:
    """A compiled form as it is stored beside the MLflow model: its name, file name and bytes, and
    the versions of what made it (kept in the bundle's manifest, for whoever reads it later)."""

    form: str
    file_name: str
    payload: bytes
    made_by: dict[str, str]


def compile_regressor(model: Any) -> Compiled | None:
    """The fastest form measured for a single-target regressor, or None when no compiler fits it."""
    linear = _linear(model)
    if linear is not None:
        return linear
    if type(model).__name__ in ("RandomForestRegressor", "ExtraTreesRegressor") and _single_output(model):
        return _onnx_forest(model)
    return _treelite(model)


def compile_classifier(model: Any) -> Compiled | None:
    """A tree ensemble classifier through treelite (gradient boosting, forests), or None."""
    return _treelite(model)


def _single_output(model: Any) -> bool:
    return int(getattr(model, "n_outputs_", 1)) == 1


def _linear(model: Any) -> Compiled | None:
    """`x @ coef + intercept`, what scikit-learn's LinearModel.predict computes, for one target."""
    coef, intercept = getattr(model, "coef_", None), getattr(model, "intercept_", None)
    if coef is None or intercept is None or np.ndim(coef) != 1 or np.ndim(intercept) != 0:
        return None
    if type(model).__name__.endswith("Classifier") or hasattr(model, "predict_proba"):
        return None  # a linear classifier's predict is not x @ coef + b
    import io

    buffer = io.BytesIO()
    np.savez(buffer, coef=np.asarray(coef, dtype=np.float64), intercept=np.float64(intercept))
    return Compiled(NUMPY_LINEAR, "serving-linear.npz", buffer.getvalue(), {"numpy": np.__version__})


def _onnx_forest(model: Any) -> Compiled:
    import onnx
    import skl2onnx
    from skl2onnx.common.data_types import FloatTensorType

    n_features = int(model.n_features_in_)
    proto = skl2onnx.to_onnx(model, initial_types=[("X", FloatTensorType([None, n_features]))])
    return Compiled(ONNXRUNTIME_FOREST, "serving-model.onnx", proto.SerializeToString(),
                    {"skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__})


def _treelite(model: Any) -> Compiled | None:
    import treelite

    try:
        compiled = treelite.sklearn.import_model(model)
    except Exception:  # a model treelite does not import (not a tree ensemble, or an unsupported one)
        return None
    return Compiled(TREELITE_TREES, "serving-model.treelite", bytes(compiled.serialize_bytes()),
                    {"treelite": treelite.__version__})


def load_runner(form: str, path: Path, task: Task) -> Runner:
    """The function that computes a compiled form's answers, from its file."""
    if form == NUMPY_LINEAR:
        return _linear_runner(path)
    if form == ONNXRUNTIME_FOREST:
        return _onnx_runner(path)
    if form == TREELITE_TREES:
        return _treelite_runner(path, task)
    raise ValueError(f"unknown compiled form '{form}'")


def runner_of(compiled: Compiled, task: Task, folder: Path) -> Runner:
    """Run a form just compiled (at training time, or at load time for a model logged without one)."""
    path = folder / compiled.file_name
    path.write_bytes(compiled.payload)
    return load_runner(compiled.form, path, task)


def _linear_runner(path: Path) -> Runner:
    with np.load(path, allow_pickle=False) as arrays:
        weights = np.ascontiguousarray(arrays["coef"], dtype=np.float64)
        bias = float(arrays["intercept"])
    if weights.ndim != 1:
        raise ValueError("a linear form holds one coefficient per feature")
    return lambda rows: rows @ weights + bias


def _onnx_runner(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One thread: a request of a few rows is done before a thread pool would start, and on a busy
    # machine the pool's threads wait for cores that serve other requests.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [session.get_outputs()[0].name]

    def run(rows: np.ndarray) -> np.ndarray:
        # The forest sees float32 features, as scikit-learn's trees do; a value too large for
        # float32 becomes infinite there and is refused, as scikit-learn refuses it.
        with np.errstate(over="ignore"):
            rows32 = np.ascontiguousarray(rows, dtype=np.float32)
        if not np.isfinite(rows32).all():
            raise InputError("features must fit in float32 for this model (|value| < 3.4e38)")
        return session.run(output_names, {input_name: rows32})[0].reshape(-1).astype(np.float64)

    return run


def _treelite_runner(path: Path, task: Task) -> Runner:
    import treelite
    import treelite.gtil

    compiled = treelite.Model.deserialize(str(path))

    def run(rows: np.ndarray) -> np.ndarray:
        # (rows, targets, classes); one thread for the reason given in _onnx_runner.
        output = treelite.gtil.predict(compiled, np.ascontiguousarray(rows, dtype=np.float64), nthread=1)
        if task == "regression":
            return np.asarray(output, dtype=np.float64).reshape(len(rows))
        scores = np.asarray(output, dtype=np.float64).reshape(len(rows), -1)
        if scores.shape[1] == 1:  # a binary classifier gives the second class's probability
            return np.hstack([1.0 - scores, scores])
        return scores

    return run
