"""Pure ASGI middleware in front of the management routes: bearer-token auth and body limits.

The data plane (app/dataplane) sits in front of these and admits its own calls with the same
token rule (Authenticator.authorize) and the profile's body limits.
"""

from typing import Any

from app.core.auth import Authenticator, required_role
from app.errors import MlopsError, PayloadTooLarge, send_error

Scope = dict[str, Any]


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    def __init__(self, app: Any, authenticator: Authenticator):
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.authenticator.enabled:
            try:
                self.authenticator.authorize(required_role(scope["path"]), header(scope, b"authorization"),
                                             scope["method"], scope["path"])
            except MlopsError as exc:
                return await send_error(send, exc)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit before they are read: by Content-Length, or while streaming.
    (Predict bodies have the data plane's limits: the API's max_predict_body_bytes and the profile's.)"""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        too_large = PayloadTooLarge(f"request body is larger than {limit} bytes")
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await send_error(send, too_large)
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
                return await send_error(send, too_large)
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
