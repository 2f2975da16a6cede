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
    promoted_alias: str | None = None
    # The version the promoted alias named before (None: it named none), for a rollback to restore.
    alias_was: str | None = None


class Rollout(CamelModel):
    revision: int  # the newest revision's number
    replicas: int
    history: list[RevisionRecord] = Field(default_factory=list)

    @property
    def newest(self) -> RevisionRecord:
        return self.history[-1]

    def find(self, number: int) -> RevisionRecord | None:
        return next((record for record in self.history if record.revision == number), None)

    def with_revision(self, model: ServedModel, cause: str, promoted_alias: str | None = None,
                      alias_was: str | None = None) -> "Rollout":
        record = RevisionRecord(revision=self.revision + 1, model=model, created_at=datetime.now(UTC), cause=cause,
                                promoted_alias=promoted_alias, alias_was=alias_was)
        return Rollout(revision=record.revision, replicas=self.replicas,
                       history=[*self.history, record][-KEPT_REVISIONS:])

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
        if record.revision == serving:
            revision_state = RevisionState.SERVING
        elif record.revision == rollout.revision and state.revision_problem:
            revision_state, message = RevisionState.FAILED, state.revision_problem
        elif record.revision == rollout.revision:
            revision_state = RevisionState.STARTING
        else:
            revision_state = RevisionState.RETIRED
        items.append(Revision(revision=record.revision, model=record.model, created_at=record.created_at,
                              cause=record.cause, state=revision_state, message=message,
                              promoted_alias=record.promoted_alias))
    return items
