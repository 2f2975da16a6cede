"""The serving bundle: extra files the trainer logs inside an MLflow scikit-learn model so that the
model server can serve it without scikit-learn (nor pandas, nor MLflow's full import).

Three files, logged with `mlflow.sklearn.log_model(extra_files=...)` (MLflow keeps them in the
model's `extra_files/` folder and lists them in the `sklearn` flavor of its MLmodel file):
  serving-form.json    the manifest (`BundleManifest`): which compiled form, its file, the classes
  serving-model.*      the compiled form (models/compiled_forms.py)
  serving-probes.npz   probe rows and the framework's own answers on them, computed at training time

At load time the server runs the compiled form on the probe rows and keeps it only if it gives the
recorded answers within the form's tolerance; otherwise it loads the framework (MLflow's
scikit-learn flavour) and serves with it. A model logged without these files still serves: the
server then loads the framework and compiles at load time (models/tabular_serving.py).
"""

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from models.compiled_forms import TOLERANCES, Compiled, Runner, Task, load_runner, runner_of

MANIFEST_NAME = "serving-form.json"
PROBES_NAME = "serving-probes.npz"
FORMAT_VERSION = 1
# How many rows of each kind the trainer records: the data's own rows, rows around its scale, and
# (for models that take them) rows with missing values. ~1,000 rows check a form in milliseconds.
PROBE_COUNT = 256

Label = str | int | float | bool


class BundleManifest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    form: str  # a compiled form's name (models/compiled_forms.py), as /metadata reports it
    task: Task
    model_file: str
    probes_file: str = PROBES_NAME
    n_features: int = Field(ge=1)
    classes: list[Label] = Field(default_factory=list)  # a classifier's classes, in its column order
    allows_missing: bool = False  # whether NaN features are answered (routed by the trees) or refused
    made_by: dict[str, str] = Field(default_factory=dict)  # compiler packages and their versions


class FormRejected(Exception):
    """The compiled form cannot serve: its files are missing or unreadable, or it disagrees."""


def probe_rows(features: np.ndarray, allows_missing: bool, seed: int = 0) -> np.ndarray:
    """Rows to check a compiled form on: a sample of the training rows, rows spread around their
    scale (where a tree's rarely used branches are), and with missing values where the model takes them."""
    rng = np.random.default_rng(seed)
    features = np.asarray(features, dtype=np.float64)
    n_features = features.shape[1]
    sample = features[rng.choice(len(features), size=min(PROBE_COUNT, len(features)), replace=False)]
    finite = np.where(np.isfinite(sample), sample, np.nan)
    center = np.nan_to_num(np.nanmean(finite, axis=0)) if len(sample) else np.zeros(n_features)
    spread = np.nan_to_num(np.nanstd(finite, axis=0)) if len(sample) else np.ones(n_features)
    spread = np.where(spread > 0, spread, np.abs(center) + 1.0)
    rows = [sample, center + 2.0 * spread * rng.normal(size=(PROBE_COUNT, n_features))]
    if allows_missing:
        holes = rows[1].copy()
        holes[rng.random(holes.shape) < 0.2] = np.nan
        rows.append(holes)
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float64)


def disagreement(run: Runner, form: str, rows: np.ndarray, answers: np.ndarray) -> str | None:
    """None when the form gives these answers on these rows, alone and all at once; else why not."""
    tolerance = TOLERANCES[form]
    try:
        for batch, want in ((rows[:1], answers[:1]), (rows, answers)):
            excess = tolerance.excess(np.asarray(run(batch), dtype=np.float64), want)
            if excess:
                return f"{form} {excess} on {len(batch)} probe row(s)"
    except Exception as exc:
        return f"{form} failed on the probe rows: {type(exc).__name__}: {exc}"
    return None


def write_bundle(compiled: Compiled, task: Task, n_features: int, rows: np.ndarray, answers: np.ndarray,
                 folder: Path, classes: list[Label] | None = None, allows_missing: bool = False) -> list[str]:
    """Write the bundle's three files into `folder` after checking the form on the probe rows there
    and then; return their paths for `extra_files`. Raises FormRejected if the form disagrees."""
    problem = disagreement(runner_of(compiled, task, folder), compiled.form, rows, answers)
    if problem:
        raise FormRejected(problem)
    manifest = BundleManifest(form=compiled.form, task=task, model_file=compiled.file_name, n_features=n_features,
                              classes=classes or [], allows_missing=allows_missing, made_by=compiled.made_by)
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(by_alias=True, indent=2))
    np.savez(folder / PROBES_NAME, rows=rows, answers=np.asarray(answers, dtype=np.float64))
    return [str(folder / name) for name in (MANIFEST_NAME, compiled.file_name, PROBES_NAME)]


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    """The MLmodel file (YAML) of a downloaded MLflow model. Read with PyYAML rather than
    mlflow.models.Model.load, whose import costs the server a second and 150 MiB."""
    loaded = yaml.safe_load((model_dir / "MLmodel").read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{model_dir / 'MLmodel'} is not an MLflow model description")
    return loaded


def feature_names(mlmodel: dict[str, Any]) -> list[str]:
    names = (mlmodel.get("metadata") or {}).get("feature_names") or []
    return [str(name) for name in names] if isinstance(names, list) else []


def find_manifest(model_dir: Path, mlmodel: dict[str, Any]) -> Path | None:
    """The bundle's manifest among the extra files the sklearn flavor lists, if the model has one."""
    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    for entry in flavor.get("extra_files") or []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and Path(path).name == MANIFEST_NAME and (model_dir / path).is_file():
            return model_dir / path
    return None


def load_checked(manifest_path: Path, task: Task) -> tuple[BundleManifest, Runner]:
    """The bundle's compiled form, checked against the framework's answers recorded at training
    time. Raises FormRejected with the reason when it cannot serve."""
    try:
        manifest = BundleManifest.model_validate_json(manifest_path.read_text())
        if manifest.task != task:
            raise FormRejected(f"the bundle is for {manifest.task}, this model server serves {task}")
        folder = manifest_path.parent
        run = load_runner(manifest.form, folder / manifest.model_file, task)
        with np.load(folder / manifest.probes_file, allow_pickle=False) as probes:
            rows, answers = probes["rows"], probes["answers"]
    except FormRejected:
        raise
    except Exception as exc:
        raise FormRejected(f"the serving bundle cannot be read: {type(exc).__name__}: {exc}") from None
    if rows.ndim != 2 or rows.shape[1] != manifest.n_features or not len(rows):
        raise FormRejected(f"the recorded probe rows do not have {manifest.n_features} features")
    if task == "classification" and (answers.ndim != 2 or answers.shape[1] != len(manifest.classes)):
        raise FormRejected(f"the recorded answers do not have one probability per class ({len(manifest.classes)})")
    problem = disagreement(run, manifest.form, rows, answers)
    if problem:
        raise FormRejected(problem)
    return manifest, run
