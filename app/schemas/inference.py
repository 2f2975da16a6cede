"""Bodies of the inference routes (/api/v1/inference/...)."""

from datetime import datetime
from enum import StrEnum

from pydantic import Field, model_validator

from app.schemas.common import CamelModel, KubernetesId, ListPage, StrictCamelModel

RunId = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
# MLflow's registered-model names are free text; these rules keep them safe in labels of logs and URIs.
RegisteredName = Field(default=None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
AliasName = Field(default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")


class ModelChoice(StrictCamelModel):
    """Which model to serve: exactly one of an MLflow run, a registered model (by version or by
    alias, the alias resolved once, when the revision is made), or, for language-model profiles,
    a model reference the profile allows."""

    mlflow_run_id: str | None = RunId
    model_name: str | None = RegisteredName
    model_version: str | None = Field(default=None, min_length=1, max_length=16, pattern=r"^[1-9][0-9]*$")
    model_alias: str | None = AliasName
    model_reference: str | None = Field(default=None, min_length=1, max_length=512)

    def chosen(self) -> bool:
        return any(value is not None for value in
                   (self.mlflow_run_id, self.model_name, self.model_version, self.model_alias, self.model_reference))


class DeployRequest(ModelChoice):
    task_id: KubernetesId
    model_id: KubernetesId
    model_profile: str = Field(min_length=1, max_length=128)
    use_gpu: bool = False
    replicas: int | None = Field(default=None, ge=1, le=64)


class Autoscaling(StrictCamelModel):
    """Replicas that follow the load: a HorizontalPodAutoscaler (autoscaling/v2) on a cluster."""

    min_replicas: int = Field(default=1, ge=1, le=64)
    max_replicas: int = Field(ge=1, le=64)
    # Average CPU use of the model servers, in percent of their CPU request, that the autoscaler keeps.
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    # Language models: vLLM's waiting requests per replica (vllm:num_requests_waiting); needs a
    # metrics adapter (e.g. prometheus-adapter) serving it as a pods metric.
    target_waiting_requests: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) must not be below minReplicas ({self.min_replicas})")
        return self


class DeploymentUpdate(ModelChoice):
    """PATCH: a new model makes a new revision, rolled out with no failed request; `replicas`
    changes the number of model servers. `promoteAlias` points that MLflow alias of the served
    registered model at the new revision's version."""

    replicas: int | None = Field(default=None, ge=1, le=64)
    # Replicas that follow the load instead of a fixed number; null turns it off again.
    autoscaling: Autoscaling | None = None
    promote_alias: str | None = AliasName


class AutoAbortRequest(StrictCamelModel):
    """Thresholds over which the control plane aborts a canary by itself; each one left out takes
    the profile's default (canary_auto_abort)."""

    max_error_ratio: float | None = Field(default=None, ge=0, le=1)
    max_p99_seconds: float | None = Field(default=None, gt=0, le=600)
    window_seconds: float | None = Field(default=None, ge=5, le=3600)
    min_requests: int | None = Field(default=None, ge=1, le=1_000_000)


class CanaryRequest(ModelChoice):
    """A second revision beside the serving one, taking `trafficPercent` of the predicts."""

    traffic_percent: int = Field(ge=1, le=99)
    # true: the profile's thresholds; an object: those thresholds, each overridable; false: none.
    auto_abort: bool | AutoAbortRequest = False


class CanaryWeight(StrictCamelModel):
    traffic_percent: int = Field(ge=1, le=99)


class CanaryPromotion(StrictCamelModel):
    # The MLflow alias moved onto the canary's registered version (when it serves one); null: none.
    promote_alias: str | None = Field(default="champion", min_length=1, max_length=255,
                                      pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")


class RollbackRequest(StrictCamelModel):
    # Default: the revision before the newest one.
    revision: int | None = Field(default=None, ge=1)
    promote_alias: str | None = AliasName


class ServedModel(CamelModel):
    """What a revision serves, as resolved when it was made."""

    mlflow_run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    # The alias the version was chosen by, if any (resolved once: the version is what is served).
    model_alias: str | None = None
    model_reference: str | None = None


class RevisionState(StrEnum):
    SERVING = "Serving"  # the revision that answers predicts
    STARTING = "Starting"  # the newest revision, until its model servers are ready
    FAILED = "Failed"  # the newest revision, whose model servers cannot start; the one before still serves
    CANARY = "Canary"  # served beside the serving revision, for part of the predicts
    RETIRED = "Retired"  # an earlier revision (or an aborted canary), kept for rollback


class Revision(CamelModel):
    revision: int
    model: ServedModel
    created_at: datetime
    # Why it was made: "created", "updated", "rolled back to N".
    cause: str
    state: RevisionState
    message: str | None = None
    # The MLflow alias this revision moved onto its version, and the version it was on before.
    promoted_alias: str | None = None


class RevisionTraffic(CamelModel):
    """What one revision answered over the last `windowSeconds`, as this API worker saw it."""

    revision: int
    weight: int  # percent of predicts sent to it
    requests: int
    error_ratio: float  # share of 5xx answers
    p99_seconds: float | None = None
    window_seconds: float


class CanaryStatus(CamelModel):
    revision: int
    model: ServedModel
    weight: int
    ready_replicas: int = 0
    message: str | None = None
    auto_abort: dict | None = None
    started_at: datetime


class RevisionList(CamelModel):
    task_id: str
    items: list[Revision]


class DeploymentStatus(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class DeploymentTask(CamelModel):
    task_id: str
    model_id: str
    # The newest revision's model (mlflowRunId is the run of a registered version too).
    mlflow_run_id: str | None = None
    model_reference: str | None = None
    model: ServedModel
    revision: int
    # The revision answering predicts now (the one before `revision` while that one starts).
    serving_revision: int | None = None
    canary: CanaryStatus | None = None
    # Per revision answering predicts: its weight, requests, error ratio and latency.
    traffic: list[RevisionTraffic] = Field(default_factory=list)
    autoscaling: Autoscaling | None = None
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


class DeploymentTaskList(ListPage):
    items: list[DeploymentTask]
