"""The API's documented errors as exceptions: every error body is {"error": {"code", "message",
"field"?}}, and each status has its class, so callers catch what they can handle."""

from typing import Any

import httpx


class MlopsError(Exception):
    """An error the API answered (or a failure to reach it: status 0)."""

    status: int = 0

    def __init__(self, message: str, *, code: str = "error", field: str | None = None, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.message}{where}"


class ApiUnreachable(MlopsError):
    """No answer from the API: wrong URL, not started, or the network."""


class BadRequest(MlopsError):
    status = 400


class Unauthorized(MlopsError):
    status = 401


class Forbidden(MlopsError):
    status = 403


class NotFound(MlopsError):
    status = 404


class Conflict(MlopsError):
    status = 409


class PayloadTooLarge(MlopsError):
    status = 413


class InvalidSpec(MlopsError):
    """422: the request names a field that breaks a rule; `field` says which."""

    status = 422


class ModelServerError(MlopsError):
    """502: the model server failed or broke its answer."""

    status = 502


class NotReady(MlopsError):
    """503: not ready yet (a deployment starting, MLflow unreachable); `retry_after` in seconds."""

    status = 503


class ModelServerTimeout(MlopsError):
    status = 504


class ServerError(MlopsError):
    status = 500


BY_STATUS: dict[int, type[MlopsError]] = {cls.status: cls for cls in (
    BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, InvalidSpec, ModelServerError,
    NotReady, ModelServerTimeout, ServerError)}


def error_from(response: httpx.Response) -> MlopsError:
    """The exception for an error answer, from its documented body (or its text when it has none)."""
    code, field, message = "error", None, ""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
        code, field, message = str(detail.get("code", code)), detail.get("field"), str(detail.get("message", ""))
    elif isinstance(body, dict) and isinstance(body.get("error"), str):  # an OpenAI-style body from a model server
        message = body["error"]
    if not message:
        message = response.text.strip()[:500] or response.reason_phrase
    retry_after = None
    if "retry-after" in response.headers:
        try:
            retry_after = float(response.headers["retry-after"])
        except ValueError:
            retry_after = None
    cls = BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else MlopsError)
    return cls(message, code=code, field=field, status=response.status_code, retry_after=retry_after)
