"""Model-family handlers: how to read a dataset, train, log to MLflow, and predict.

Handlers know nothing about Kubernetes or FastAPI. The control plane only needs their names
(`HANDLERS`), so importing this package never imports torch or scikit-learn.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.base import ModelHandler

# handler name -> "module:class"; modules are imported on first use.
HANDLERS: dict[str, str] = {
    "torch_mlp_regressor": "models.torch_mlp:TorchMlpRegressorHandler",
    "sklearn_hgb_classifier": "models.sklearn_classifier:HistGradientBoostingClassifierHandler",
    "sklearn_regressor": "models.sklearn_regressor:SklearnRegressorHandler",
    "llm_lora": "models.llm_lora:LoraFineTuneHandler",
    "llm_chat": "models.llm_chat:ChatModelHandler",
}


def get_handler(name: str) -> "ModelHandler":
    try:
        module_name, class_name = HANDLERS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown handler '{name}' (known: {', '.join(sorted(HANDLERS))})") from None
    return getattr(importlib.import_module(module_name), class_name)()
