"""Model-family handlers: how to read a dataset, train, log to MLflow, and predict.

Handlers know nothing about Kubernetes or FastAPI. The control plane only needs their names
(`HANDLERS`), so importing this package never imports torch or scikit-learn.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.base import ModelHandler, ServingHandler

# handler name -> "module:class"; modules are imported on first use.
HANDLERS: dict[str, str] = {
    "torch_mlp_regressor": "models.torch_mlp:TorchMlpRegressorHandler",
    "sklearn_hgb_classifier": "models.sklearn_classifier:HistGradientBoostingClassifierHandler",
    "sklearn_regressor": "models.sklearn_regressor:SklearnRegressorHandler",
    "llm_lora": "models.llm_lora:LoraFineTuneHandler",
    "llm_chat": "models.llm_chat:ChatModelHandler",
}

# Handlers whose model script/serve.py downloads from MLflow and serves itself (language models have
# servers of their own), mapped to their serving half. The scikit-learn ones live in a module of
# their own, so that a model server imports neither the training code nor scikit-learn, pandas or MLflow.
SERVING_HANDLERS: dict[str, str] = {
    "torch_mlp_regressor": "models.torch_mlp:TorchMlpRegressorHandler",
    "sklearn_hgb_classifier": "models.tabular_serving:ClassifierServing",
    "sklearn_regressor": "models.tabular_serving:RegressorServing",
}


def _instance(reference: str) -> object:
    module_name, class_name = reference.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def get_handler(name: str) -> "ModelHandler":
    if name not in HANDLERS:
        raise ValueError(f"unknown handler '{name}' (known: {', '.join(sorted(HANDLERS))})")
    return _instance(HANDLERS[name])  # type: ignore[return-value]


def get_serving_handler(name: str) -> "ServingHandler":
    """What script/serve.py loads a model with: the serving half when it has a module of its own."""
    if name in SERVING_HANDLERS:
        return _instance(SERVING_HANDLERS[name])  # type: ignore[return-value]
    return get_handler(name)
