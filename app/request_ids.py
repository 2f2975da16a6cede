"""Request ids: the client's X-Request-ID when it sends a usable one, else a new one. The id is
returned in the answer, passed to the model server, and written in every log line about the
request (RequestContextFilter reads it, and the task id, from the request's context)."""

import logging
from contextvars import ContextVar
from typing import Any

from models.logs import REQUEST_ID_HEADER as HEADER
from models.logs import request_id

__all__ = ["HEADER", "RequestContextFilter", "current", "request_id", "task_id_of"]
# The request id and ASGI scope of the request the current task serves (its path parameters name
# its task id, once routed).
current: ContextVar[tuple[str, dict[str, Any]] | None] = ContextVar("mlops_request", default=None)


def task_id_of(scope: dict[str, Any]) -> str | None:
    return (scope.get("path_params") or {}).get("task_id")


class RequestContextFilter(logging.Filter):
    """Adds `requestId` and `taskId` to a record written while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current.get()
        if context is not None:
            record.__dict__.setdefault("requestId", context[0])
            task_id = task_id_of(context[1])
            if task_id is not None:
                record.__dict__.setdefault("taskId", task_id)
        return True
