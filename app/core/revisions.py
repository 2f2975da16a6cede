"""A deployment's revisions: each model it was asked to serve, numbered, kept with the workload.

The history is an annotation of the inference Deployment (on a cluster the cluster is the
database; locally the same manifest is kept in the task's directory), so it survives an API
restart and is read back with the task. The newest revision is the one the workload's pod template
serves; the runtime says which revision answers now.
"""

from datetime import UTC, datetime

from pydantic import Field

from app.runtime.base import WorkloadState
from app.schemas.common import CamelModel
from app.schemas.inference import Revision, RevisionState, ServedModel

# As a Deployment's revisionHistoryLimit: older revisions are forgotten (and cannot be rolled back to).
KEPT_REVISIONS = 10


class RevisionRecord(CamelModel):
    revision: int
    model: ServedModel
    created_at: datetime
    cause: str
    # Why a canary of this revision was aborted, if it was.
    aborted: str | None = None
    promoted_alias: str | None = None
    # The version the promoted alias named before (None: it named none), for a rollback to restore.
    alias_was: str | None = None


class AutoAbort(CamelModel):
    """When the control plane aborts a canary by itself: over the last `window_seconds`, once it
    has answered at least `min_requests`, a share of 5xx answers above `max_error_ratio` or a p99
    latency above `max_p99_seconds`."""

    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    max_p99_seconds: float = Field(default=1.0, gt=0)
    window_seconds: float = Field(default=60.0, ge=5, le=3600)
    min_requests: int = Field(default=20, ge=1)


class CanaryRecord(CamelModel):
    revision: int  # a revision of `history`, served beside the stable one
    weight: int = Field(ge=1, le=99)  # percent of predicts
    auto_abort: AutoAbort | None = None
    started_at: datetime


class Rollout(CamelModel):
    revision: int  # the newest stable revision's number (the pod template's)
    replicas: int
    history: list[RevisionRecord] = Field(default_factory=list)
    canary: CanaryRecord | None = None
    # The HorizontalPodAutoscaler's settings, when the replicas follow the load.
    autoscaling: dict | None = None

    @property
    def newest(self) -> RevisionRecord:
        """The stable revision: the one the stable Deployment's pod template serves."""
        found = self.find(self.revision)
        assert found is not None, "the stable revision is always kept"
        return found

    def previous(self) -> RevisionRecord | None:
        """The stable revision before this one (aborted canaries never served alone: skipped)."""
        earlier = [record for record in self.history if record.revision < self.revision and not record.aborted
                   and not (self.canary and record.revision == self.canary.revision)]
        return earlier[-1] if earlier else None

    def replaced(self, record: RevisionRecord) -> "Rollout":
        return self.model_copy(update={"history": [record if r.revision == record.revision else r
                                                   for r in self.history]})

    def find(self, number: int) -> RevisionRecord | None:
        return next((record for record in self.history if record.revision == number), None)

    def with_revision(self, model: ServedModel, cause: str, promoted_alias: str | None = None,
                      alias_was: str | None = None) -> "Rollout":
        """A new stable revision serving `model`."""
        record = self.new_record(model, cause, promoted_alias, alias_was)
        return self.model_copy(update={"revision": record.revision, "history": self.keep([*self.history, record])})

    def new_record(self, model: ServedModel, cause: str, promoted_alias: str | None = None,
                   alias_was: str | None = None) -> RevisionRecord:
        number = max(record.revision for record in self.history) + 1 if self.history else 1
        return RevisionRecord(revision=number, model=model, created_at=datetime.now(UTC), cause=cause,
                              promoted_alias=promoted_alias, alias_was=alias_was)

    def keep(self, history: list[RevisionRecord]) -> list[RevisionRecord]:
        """The last KEPT_REVISIONS, and always the stable and the canary revisions."""
        needed = {self.revision, *([self.canary.revision] if self.canary else [])}
        extra = len(history) - KEPT_REVISIONS
        kept = []
        for record in history:
            if extra > 0 and record.revision not in needed:
                extra -= 1
                continue
            kept.append(record)
        return kept

    def as_annotation(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def first_rollout(model: ServedModel, replicas: int, created_at: datetime | None = None) -> Rollout:
    record = RevisionRecord(revision=1, model=model, created_at=created_at or datetime.now(UTC), cause="created")
    return Rollout(revision=1, replicas=replicas, history=[record])


def served_model_of_request(request: dict) -> ServedModel:
    """A deployment made before revisions existed: its request names its one model."""
    return ServedModel(mlflow_run_id=request.get("mlflowRunId"), model_reference=request.get("modelReference"))


def rollout_of_state(state: WorkloadState) -> Rollout:
    if state.rollout:
        return Rollout.model_validate(state.rollout)
    request = state.request
    return first_rollout(served_model_of_request(request), request.get("replicas", 1), state.created_at)


def revision_states(state: WorkloadState, rollout: Rollout) -> list[Revision]:
    """Each kept revision with its state, the newest first."""
    serving = state.serving_revision
    items = []
    for record in reversed(rollout.history):
        message = None
        if rollout.canary is not None and record.revision == rollout.canary.revision:
            revision_state, message = RevisionState.CANARY, state.canary_problem
        elif record.revision == serving:
            revision_state = RevisionState.SERVING
        elif record.revision == rollout.revision and state.revision_problem:
            revision_state, message = RevisionState.FAILED, state.revision_problem
        elif record.revision == rollout.revision:
            revision_state = RevisionState.STARTING
        else:
            revision_state = RevisionState.RETIRED
            message = f"canary aborted {record.aborted}" if record.aborted else None
        items.append(Revision(revision=record.revision, model=record.model, created_at=record.created_at,
                              cause=record.cause, state=revision_state, message=message,
                              promoted_alias=record.promoted_alias))
    return items
