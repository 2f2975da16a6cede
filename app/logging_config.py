"""Logging of the API process: uvicorn's own loggers and the control plane's (`mlops.*`), one
format for all of them (models/logs.py: JSON lines, or text with MLOPS_LOG_FORMAT=text), each
line with the request id and task id of the request it was written for, where there is one."""

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG


def log_config(level: str, kind: str) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    shared = {"()": "models.logs.formatter", "kind": kind}
    config["formatters"] = {"default": shared, "access": shared}
    config["filters"] = {"request": {"()": "app.request_ids.RequestContextFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request"]
    config["loggers"]["mlops"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    # Access lines go to stdout, as uvicorn's own do.
    config["loggers"]["mlops.access"] = {"handlers": ["access"], "level": level.upper(), "propagate": False}
    return config
