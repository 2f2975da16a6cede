"""Logging a scikit-learn model the way script/serve.py loads it: skops (no arbitrary pickle),
pinned requirements, the feature names as metadata, and the serving bundle (a compiled form with
probe rows and the framework's answers on them; models/serving_bundle.py) as extra files."""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import sklearn
import skops.io
from sklearn.base import BaseEstimator

from models.base import TabularData, TrainContext, TrainingError
from models.compiled_forms import Compiled, Task, compile_classifier, compile_regressor
from models.logs import event
from models.serving_bundle import probe_rows, write_bundle
from models.spec import MODEL_ARTIFACT_PATH
from models.tabular_serving import json_label


def trusted_types(model: BaseEstimator) -> list[str]:
    """The types of this model's skops file that skops does not trust by default (a forest's trees,
    a boosted model's predictors), asked of skops itself rather than written here by name.

    Trusting them is safe because our trainer has just made this model; only scikit-learn's own
    types are accepted. (MLflow keeps the list in the MLmodel file and hands it to skops.io.load.)"""
    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    foreign = [name for name in found if not name.startswith("sklearn.")]
    if foreign:
        raise TrainingError(f"the model holds types that are not scikit-learn's: {', '.join(foreign)}")
    return found


def write_serving_bundle(model: BaseEstimator, data: TabularData, task: Task, allows_missing: bool,
                         folder: Path) -> list[str]:
    """The serving bundle's files, or none (the server then compiles at load time or uses the
    framework) when no compiler fits the model or its form disagrees with the framework."""
    compile_model: Callable[[Any], Compiled | None] = compile_classifier if task == "classification" \
        else compile_regressor
    rows = probe_rows(data.features, allows_missing)
    answers = model.predict_proba(rows) if task == "classification" else model.predict(rows)
    try:
        compiled = compile_model(model)
        if compiled is None:
            outcome = {"compiledForm": None, "reason": "no compiler fits this model"}
            files: list[str] = []
        else:
            classes = [json_label(c) for c in getattr(model, "classes_", [])]
            files = write_bundle(compiled, task, int(model.n_features_in_), rows, np.asarray(answers), folder,
                                 classes=classes, allows_missing=allows_missing)
            outcome = {"compiledForm": compiled.form, "probeRows": len(rows)}
    except Exception as exc:  # FormRejected or a compiler's error: never fail a training run over it
        outcome, files = {"compiledForm": None, "reason": f"{type(exc).__name__}: {exc}"}, []
    event("serving bundle", **outcome)
    return files


def log_sklearn_model(model: BaseEstimator, data: TabularData, context: TrainContext, task: Task,
                      allows_missing: bool = False) -> None:
    """`allows_missing`: the model answers rows with NaN features (its trees route them), so the
    server takes them too and the probe rows include some."""
    with tempfile.TemporaryDirectory(prefix="mlops-bundle-") as folder:
        mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT_PATH,
            input_example=data.features[: min(5, len(data.features))],
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}"],
            registered_model_name=context.registered_model_name,
            metadata={"feature_names": data.feature_names, "target": data.target_name},
            skops_trusted_types=trusted_types(model),
            extra_files=write_serving_bundle(model, data, task, allows_missing, Path(folder)) or None,
        )
