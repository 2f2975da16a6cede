"""What the API answers, as typed objects. Field names are the API's (camelCase on the wire,
snake_case here); tests/test_client.py checks every model against the API's OpenAPI document, so
the two cannot drift. Fields a newer API adds are kept (extra="allow"), not refused."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_wire(self) -> dict[str, Any]:
        """The object as the API sent it (camelCase, JSON types), for -o json / yaml."""
        return self.model_dump(mode="json", by_alias=True)


class TrainingProgress(ApiModel):
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class TrainingTask(ApiModel):
    task_id: str
    status: str  # Pending, Running, Succeeded, Failed
    message: str | None = None
    experiment_name: str
    model_profile: str
    custom_model_name: str | None = None
    dataset_path: str
    target_column: str | None = None
    use_gpu: bool
    trainer_image: str
    hyperparameters: dict[str, Any]
    job_name: str
    created_at: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    mlflow_run_id: str | None = None
    progress: TrainingProgress | None = None
    metrics: dict[str, float] | None = None
    registered_model_version: str | None = None
    mlflow_run_url: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("Succeeded", "Failed")


class ServedModel(ApiModel):
    mlflow_run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_alias: str | None = None
    model_reference: str | None = None

    def describe(self) -> str:
        if self.model_name:
            alias = f" (@{self.model_alias})" if self.model_alias else ""
            return f"{self.model_name} v{self.model_version}{alias}"
        return self.model_reference or (f"run {self.mlflow_run_id}" if self.mlflow_run_id else "-")


class RevisionTraffic(ApiModel):
    revision: int
    weight: int
    requests: int
    error_ratio: float
    p99_seconds: float | None = None
    window_seconds: float


class CanaryStatus(ApiModel):
    revision: int
    model: ServedModel
    weight: int
    ready_replicas: int = 0
    message: str | None = None
    auto_abort: dict[str, Any] | None = None
    started_at: datetime


class Autoscaling(ApiModel):
    min_replicas: int = 1
    max_replicas: int
    target_cpu_utilization: int = 70
    target_waiting_requests: int | None = None


class DeploymentTask(ApiModel):
    task_id: str
    model_id: str
    mlflow_run_id: str | None = None
    model_reference: str | None = None
    model: ServedModel
    revision: int
    serving_revision: int | None = None
    canary: CanaryStatus | None = None
    traffic: list[RevisionTraffic] = Field(default_factory=list)
    autoscaling: Autoscaling | None = None
    model_profile: str
    use_gpu: bool
    replicas: int
    ready_replicas: int = 0
    status: str  # Pending, Ready, Failed
    message: str | None = None
    engine: str
    service_name: str
    predict_path: str
    created_at: datetime | None = None


class Revision(ApiModel):
    revision: int
    model: ServedModel
    created_at: datetime
    cause: str
    state: str  # Serving, Starting, Failed, Canary, Retired
    message: str | None = None
    promoted_alias: str | None = None


class DeletedTask(ApiModel):
    task_id: str
    deleted: bool = True


class DryRunResult(ApiModel):
    dry_run: bool = True
    manifests: list[dict[str, Any]]


# Each model and the OpenAPI component it mirrors (tests/test_client.py).
OPENAPI_COMPONENTS: dict[type[ApiModel], str] = {
    TrainingProgress: "TrainingProgress", TrainingTask: "TrainingTask", ServedModel: "ServedModel",
    RevisionTraffic: "RevisionTraffic", CanaryStatus: "CanaryStatus", Autoscaling: "Autoscaling",
    DeploymentTask: "DeploymentTask", Revision: "Revision", DeletedTask: "DeletedTask", DryRunResult: "DryRunResult",
}
