"""What the control plane hands a workload: the task's spec, as JSON in one environment variable.

Hyperparameters and paths travel as data, never as text spliced into a command line.
"""

from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from models.workload_env import (  # noqa: F401 - the names workloads and the control plane share
    DEFAULT_TERMINATION_LOG,
    SERVE_HOST_ENV,
    SERVE_PORT_ENV,
    SERVE_SPEC_ENV,
    TERMINATION_LOG_ENV,
    TRAIN_SPEC_ENV,
)

# MLflow run tags that tie a run to the task that made it.
TASK_ID_TAG = "mlops.task_id"
PROFILE_TAG = "mlops.model_profile"
HANDLER_TAG = "mlops.handler"
MODEL_ARTIFACT_PATH = "model"
# The Python that has vLLM (script/llm_server.py): set where vLLM lives in an environment of its own.
VLLM_PYTHON_ENV = "MLOPS_VLLM_PYTHON"
# "false" turns 4-bit QLoRA off for a LoRA Job on a GPU (the profile's llm.qlora_on_gpu).
QLORA_ENV = "MLOPS_LLM_QLORA"
# How long a language model's server that is told to stop (a revision replaced, a replica scaled
# away, a deployment deleted) keeps generating for the streams in flight before it aborts them:
# vLLM's --shutdown-timeout, within the pod's termination grace period.
LLM_STREAM_DRAIN_SECONDS = 300


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSpec(_Spec):
    task_id: str
    experiment_name: str
    model_profile: str
    handler: str
    dataset_path: str
    target_column: str | None = None
    custom_model_name: str | None = None
    initial_model_uri: str | None = None
    use_gpu: bool = False
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class ServeSpec(_Spec):
    task_id: str
    model_id: str
    # One of: an MLflow model (runs:/<id>/model), or for language models a reference the profile
    # allows (a path on the model volume, or a name the cluster can pull).
    model_uri: str | None = None
    model_reference: str | None = None
    model_profile: str
    handler: str
    max_rows: int = 10_000
    max_request_bytes: int = 8 * 1024 * 1024
    use_gpu: bool = False
    # Language models: the name vLLM serves the model under (clients' "model"), and where weights
    # are cached. vLLM's own arguments are the container's args (the profile's).
    served_model_name: str | None = None
    model_cache_dir: str | None = None


def dataset_scheme(path: str) -> str:
    """'s3', 'file' or 'local' for the paths we read; any other scheme as given, for the caller to refuse.

    Lives here, not in models.datasets, so the control plane can check a path without pandas.
    """
    scheme = urlparse(path).scheme.lower()
    return scheme if scheme else "local"

# The trainer's whole log, kept as this artifact of its run (it outlives the pod).
TRAINER_LOG_ARTIFACT = "logs/trainer.log"
