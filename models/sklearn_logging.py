"""Logging a scikit-learn model the way script/serve.py loads it: skops (no arbitrary pickle),
pinned requirements, and the feature names as metadata."""

import mlflow
import sklearn
from sklearn.base import BaseEstimator

from models.base import TabularData, TrainContext
from models.spec import MODEL_ARTIFACT_PATH


def log_sklearn_model(model: BaseEstimator, data: TabularData, context: TrainContext,
                      trusted_types: list[str]) -> None:
    """`trusted_types`: the model's own classes beyond skops' safe defaults, written by our trainer."""
    mlflow.sklearn.log_model(
        model,
        name=MODEL_ARTIFACT_PATH,
        input_example=data.features[: min(5, len(data.features))],
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}"],
        registered_model_name=context.registered_model_name,
        metadata={"feature_names": data.feature_names, "target": data.target_name},
        skops_trusted_types=trusted_types,
    )
