"""The small interfaces a model family implements: training (dataset in, MLflow run out) and serving."""

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

    def describe(self) -> dict[str, Any]:
        """What the run records about the dataset, as MLflow params."""
        return {"rows": len(self.target), "features": len(self.feature_names), "target": self.target_name}


class Dataset(Protocol):
    """What a handler's `load_dataset` returns: any shape its `train` takes, and a summary for the run."""

    def describe(self) -> dict[str, Any]: ...


@dataclass
class TrainContext:
    hyperparameters: dict[str, Any]
    device: str  # "cpu" or "cuda"
    initial_model_uri: str | None = None
    registered_model_name: str | None = None


class Predictor(Protocol):
    n_features: int
    feature_names: list[str]
    # How predictions are computed, e.g. "numpy linear" or "onnxruntime forest" for a compiled form
    # checked against the framework's answers, or the framework's own call; /metadata reports it.
    form: str
    # Why a faster form does not serve, when one was tried and refused (None otherwise).
    note: str | None

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        """Rows of shape (n, n_features) -> a dict with at least "predictions", ready for orjson
        (numpy arrays included)."""
        ...


class TrainingHandler(Protocol):
    """What script/train.py needs: read the dataset in the family's own format, then train on it."""

    def load_dataset(self, path: str, target_column: str | None) -> Dataset:
        """Read and check the dataset at a local path, file:// or s3:// URI; raise TrainingError if unusable."""
        ...

    def train(self, data: Any, context: TrainContext) -> dict[str, float]:
        """Train on what load_dataset returned, inside the active MLflow run; log metrics and the model;
        return final metrics."""
        ...


class ServingHandler(Protocol):
    """Also optional: `preload()`, imports that script/serve.py runs while the model downloads."""

    def load(self, model_dir: str, device: str) -> Predictor:
        """Build the predictor from an MLflow model already downloaded to `model_dir`."""
        ...


class ModelHandler(TrainingHandler, ServingHandler, Protocol):
    """A family that both trains and serves (the tabular ones); language models split the two halves
    between llm_lora (training) and llm_chat (serving)."""
