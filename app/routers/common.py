"""Responses and query parameters shared by the routers."""

from typing import Annotated, Any

from fastapi import Query

from app.schemas.common import ErrorBody

# The list routes' paging and filters, as the Kubernetes API names them (limit, continue).
LimitQuery = Annotated[int | None, Query(ge=1, description="At most this many items; the answer's `continue` "
                                                           "asks for the next page")]
ContinueQuery = Annotated[str | None, Query(alias="continue", min_length=1, max_length=4096,
                                            description="The previous page's `continue`, as it came")]
ProfileQuery = Annotated[str | None, Query(min_length=1, max_length=253,
                                           description="Only tasks of this model profile")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        403: "Not allowed by the profile",
        404: "Unknown task, or unknown MLflow run",
        409: "The task id exists with another spec",
        422: "Invalid request: the error names the field and the rule",
        503: "A dependency (MLflow, the cluster) or the model server is not available; see Retry-After",
    }.items()
}
