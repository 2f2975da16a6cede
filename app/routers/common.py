"""Responses shared by the routers."""

from typing import Any

from app.schemas.common import ErrorBody

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
