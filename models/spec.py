"""What the control plane hands a workload: the task's spec, as JSON in one environment variable.

Hyperparameters and paths travel as data, never as text spliced into a command line.
"""

from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

TRAIN_SPEC_ENV = "MLOPS_TRAIN_SPEC"
SERVE_SPEC_ENV = "MLOPS_SERVE_SPEC"
SERVE_HOST_ENV = "MLOPS_SERVE_HOST"
SERVE_PORT_ENV = "MLOPS_SERVE_PORT"
# Kubernetes reads a container's last words from this file (terminationMessagePath).
TERMINATION_LOG_ENV = "MLOPS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# MLflow run tags that tie a run to the task that made it.
TASK_ID_TAG = "mlops.task_id"
PROFILE_TAG = "mlops.model_profile"
HANDLER_TAG = "mlops.handler"
MODEL_ARTIFACT_PATH = "model"
# "false" turns 4-bit QLoRA off for a LoRA Job on a GPU (the profile's llm.qlora_on_gpu).
QLORA_ENV = "MLOPS_LLM_QLORA"


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
    # Language models: `vllm serve` arguments (used when vLLM can run), the name clients give as
    # "model", the CPU backend's token limit, and where weights are cached.
    engine_args: list[str] = Field(default_factory=list)
    served_model_name: str | None = None
    max_new_tokens: int = 256
    model_cache_dir: str | None = None


def dataset_scheme(path: str) -> str:
    """'s3', 'file' or 'local' for the paths we read; any other scheme as given, for the caller to refuse.

    Lives here, not in models.datasets, so the control plane can check a path without pandas.
    """
    scheme = urlparse(path).scheme.lower()
    return scheme if scheme else "local"

# The trainer's whole log, kept as this artifact of its run (it outlives the pod).
TRAINER_LOG_ARTIFACT = "logs/trainer.log"
