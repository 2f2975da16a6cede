"""Logging of the API process: uvicorn's own set-up, plus the control plane's loggers (`mlops.*`):
one access line per request on stdout (app/access_log.py), warnings on stderr."""

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG


def log_config(level: str) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["mlops_access"] = {"()": "uvicorn.logging.DefaultFormatter",
                                            "fmt": "%(levelprefix)s %(message)s"}
    config["handlers"]["mlops_access"] = {"formatter": "mlops_access", "class": "logging.StreamHandler",
                                          "stream": "ext://sys.stdout"}
    config["loggers"]["mlops"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["mlops.access"] = {"handlers": ["mlops_access"], "level": level.upper(), "propagate": False}
    return config
