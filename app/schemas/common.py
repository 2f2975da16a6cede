"""Base model and shared types of the API's request and response bodies."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.core.names import id_problem


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class ListPage(CamelModel):
    """Where a paged list goes on, as the Kubernetes API says it: `continue` is passed back for the
    next page; both are null on the last page (and on a list asked for without `limit`)."""

    continue_token: str | None = Field(None, alias="continue",
                                       description="Pass as ?continue= for the next page; null on the last")
    remaining_item_count: int | None = Field(None, description="Matching tasks after this page")


class StrictCamelModel(CamelModel):
    """Request bodies: an unknown field is refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


def _valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


KubernetesId = Annotated[str, AfterValidator(_valid_id)]


class ErrorDetail(CamelModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(CamelModel):
    error: ErrorDetail


class DeletedTask(CamelModel):
    task_id: str
    deleted: bool = True


class DryRunResult(CamelModel):
    dry_run: bool = True
    manifests: list[dict]
