"""Pure ASGI middleware in front of every route: bearer-token auth and request body limits.

Pure ASGI (not BaseHTTPMiddleware) so the predict hot path pays a dict lookup, not a task hop.
"""

from typing import Any

import orjson

from app.core.auth import Authenticator, Role, required_role

Scope = dict[str, Any]


async def _reply(send: Any, status: int, code: str, message: str, headers: list | None = None) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    def __init__(self, app: Any, authenticator: Authenticator):
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.authenticator.enabled:
            return await self.app(scope, receive, send)
        needed = required_role(scope["path"])
        if needed is not None:
            role = self.authenticator.role_of(_header(scope, b"authorization"))
            if role is None:
                return await _reply(send, 401, "unauthorized", "a valid bearer token is required (Authorization: "
                                    "Bearer <token>)", [(b"www-authenticate", b'Bearer realm="mlops"')])
            if needed == Role.ADMIN and role != Role.ADMIN:
                return await _reply(send, 403, "forbidden",
                                    f"this token has role '{role}', which may only call predict routes; "
                                    f"{scope['method']} {scope['path']} needs role 'admin'")
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit before they are read: by Content-Length, or while streaming."""

    def __init__(self, app: Any, max_bytes: int, max_predict_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_predict_bytes = max_predict_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_predict_bytes if required_role(scope["path"]) == Role.PREDICT else self.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reply(send, 413, "payload_too_large", f"request body is larger than {limit} bytes")
        if declared is not None:
            # The server's HTTP parser holds the body to its declared length.
            return await self.app(scope, receive, send)
        # Chunked: read it whole, up to the limit, then hand it on.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await _reply(send, 413, "payload_too_large", f"request body is larger than {limit} bytes")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


