"""Python client and command line (`mlops`) of the MLOps control plane."""

from mlops_client.client import Client
from mlops_client.errors import (
    ApiUnreachable,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidSpec,
    MlopsError,
    ModelServerError,
    ModelServerTimeout,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
)
from mlops_client.models import DeploymentTask, Revision, TrainingTask

__all__ = ["ApiUnreachable", "BadRequest", "Client", "Conflict", "DeploymentTask", "Forbidden", "InvalidSpec",
           "MlopsError", "ModelServerError", "ModelServerTimeout", "NotFound", "NotReady", "PayloadTooLarge",
           "Revision", "ServerError", "TrainingTask", "Unauthorized"]
