"""Bodies of the training routes (/api/v1/train/jobs)."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from app.schemas.common import CamelModel, KubernetesId, ListPage, StrictCamelModel

# Values a client may send to say "no initial model" (the seed sends the string "None").
_NO_MODEL = {"", "none", "null"}


class TrainRequest(StrictCamelModel):
    task_id: KubernetesId
    experiment_name: str = Field(min_length=1, max_length=256)
    model_profile: str = Field(min_length=1, max_length=128)
    custom_model_name: str | None = Field(default=None, min_length=1, max_length=256)
    initial_model_file_path: str | None = Field(default=None, max_length=2048)
    dataset_path: str = Field(min_length=1, max_length=2048)
    target_column: str | None = Field(default=None, min_length=1, max_length=256)
    trainer_image: str | None = Field(default=None, min_length=1, max_length=512)
    use_gpu: bool = False
    hyperparameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("initial_model_file_path")
    @classmethod
    def _none_means_none(cls, value: str | None) -> str | None:
        return None if value is None or value.strip().lower() in _NO_MODEL else value


class TrainingStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class TrainingProgress(CamelModel):
    """Where a running job is, from the progress metrics its trainer logs to MLflow."""

    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    # The latest value of each other metric the trainer logged (a loss, a validation score).
    metrics: dict[str, float] = Field(default_factory=dict)


class TrainingTask(CamelModel):
    task_id: str
    status: TrainingStatus
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
    # Once Succeeded: the run's final metrics, the version registered as customModelName, and the
    # run's page in the MLflow UI.
    metrics: dict[str, float] | None = None
    registered_model_version: str | None = None
    mlflow_run_url: str | None = None


class TrainingTaskList(ListPage):
    items: list[TrainingTask]
