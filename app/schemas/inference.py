"""Bodies of the inference routes (/api/v1/inference/...)."""

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from app.schemas.common import CamelModel, KubernetesId, StrictCamelModel


class DeployRequest(StrictCamelModel):
    task_id: KubernetesId
    model_id: KubernetesId
    mlflow_run_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    # Language-model profiles only: a model the profile allows, instead of an MLflow run.
    model_reference: str | None = Field(default=None, min_length=1, max_length=512)
    model_profile: str = Field(min_length=1, max_length=128)
    use_gpu: bool = False
    replicas: int | None = Field(default=None, ge=1, le=64)


class DeploymentStatus(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class DeploymentTask(CamelModel):
    task_id: str
    model_id: str
    mlflow_run_id: str | None = None
    model_reference: str | None = None
    model_profile: str
    use_gpu: bool
    replicas: int
    # Replicas passing their readiness probe now.
    ready_replicas: int = 0
    status: DeploymentStatus
    message: str | None = None
    # What serves the model: "vllm" (vLLM's OpenAI server) for language models, "mlops-model-server"
    # (script/serve.py) for the others.
    engine: str
    service_name: str
    predict_path: str
    created_at: datetime | None = None


class DeploymentTaskList(CamelModel):
    items: list[DeploymentTask]
