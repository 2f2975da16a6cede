"""Domain errors and the one table that maps them to HTTP statuses.

Every error body has the same shape: {"error": {"code", "message", "field"?}}.
"""

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class MlopsError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidSpec(MlopsError):
    status_code, code = 422, "invalid_spec"


class Unauthorized(MlopsError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required (Authorization: Bearer <token>)"):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="mlops"'})


class Forbidden(MlopsError):
    status_code, code = 403, "forbidden"


class TaskNotFound(MlopsError):
    status_code, code = 404, "not_found"


class TaskConflict(MlopsError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(MlopsError):
    status_code, code = 413, "payload_too_large"


class NotReady(MlopsError):
    status_code, code = 503, "not_ready"

    def __init__(self, message: str, *, retry_after: int = 2, field: str | None = None):
        super().__init__(message, field=field, headers={"Retry-After": str(retry_after)})


class TooManyRequests(MlopsError):
    status_code, code = 429, "too_many_requests"

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class DependencyUnavailable(MlopsError):
    """MLflow or the cluster cannot be reached; nothing was changed."""

    status_code, code = 503, "dependency_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ClusterPermissionDenied(MlopsError):
    """The control plane's own ServiceAccount may not do what the request needs (RBAC)."""

    status_code, code = 503, "cluster_permission_denied"


class UpstreamTimeout(MlopsError):
    status_code, code = 504, "upstream_timeout"


class UpstreamError(MlopsError):
    status_code, code = 502, "upstream_error"


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    detail.update(extra)
    return {"error": detail}


def error_json(exc: MlopsError) -> bytes:
    """The JSON body of an error answer, for paths that answer without FastAPI's handlers."""
    return orjson.dumps(error_body(exc.code, exc.message, exc.field))


def error_headers(exc: MlopsError) -> list[tuple[bytes, bytes]]:
    """An error answer's headers as ASGI takes them: its content type and the error's own (Retry-After...)."""
    return [(b"content-type", b"application/json"),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items())]


async def send_error(send: Any, exc: MlopsError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with `exc` in the API's error shape, from an ASGI layer in front of FastAPI's handlers."""
    body = error_json(exc)
    headers = [*error_headers(exc), *(extra_headers or []), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop the "body"/"query"/"path" root; keep the wire (camelCase) names pydantic reports.
    parts = [str(part) for part in loc[1:]] if loc and loc[0] in {"body", "query", "path"} else list(map(str, loc))
    return ".".join(parts) or str(loc[0] if loc else "body")


def _validation_message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    # pydantic prefixes messages of custom validators with "Value error, ".
    return message.removeprefix("Value error, ")


async def _mlops_error(_: Request, exc: MlopsError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.field), exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": _field_path(tuple(err.get("loc", ()))), "message": _validation_message(err)} for err in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    return JSONResponse(error_body("invalid_request", message, first["field"], errors=errors), 422)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MlopsError, _mlops_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
