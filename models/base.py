"""The one small interface every model family implements."""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class TrainingError(Exception):
    """A problem the user can fix (bad data, bad settings): reported as is, without a trace."""


class InputError(Exception):
    """A predict payload the model cannot take; the message tells the caller what is wrong."""


@dataclass
class TabularData:
    features: np.ndarray  # float64, shape (rows, n_features)
    target: np.ndarray  # shape (rows,)
    feature_names: list[str]
    target_name: str


@dataclass
class TrainContext:
    hyperparameters: dict[str, Any]
    device: str  # "cpu" or "cuda"
    initial_model_uri: str | None = None
    registered_model_name: str | None = None


class Predictor(Protocol):
    n_features: int
    feature_names: list[str]
    # How predictions are computed, e.g. "numpy linear" for a form prepared at load time and
    # checked against the framework, or the framework's own call; /metadata reports it.
    form: str

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        """Rows of shape (n, n_features) -> a dict with at least "predictions", ready for orjson
        (numpy arrays included)."""
        ...


class ModelHandler(Protocol):
    # Whether the target is a class label (kept as is) or a number.
    categorical_target: bool
    # Whether features may have missing values (NaN).
    allows_missing_features: bool

    def train(self, data: TabularData, context: TrainContext) -> dict[str, float]:
        """Train inside the active MLflow run, log metrics and the model; return final metrics."""
        ...

    def load(self, model_uri: str, device: str) -> Predictor: ...
