"""The data plane on its own, for tests: its ASGI layer in front of a FastAPI app that has only the
error handlers (so a path that is not the data plane's is FastAPI's 404), with an endpoint cache
the test fills and profiles it can tighten."""

from typing import Any

import httpx
from fastapi import FastAPI

from app.access_log import AccessLog
from app.core.auth import Authenticator
from app.dataplane import DataPlane, UpstreamClient
from app.dataplane.admission import Admission
from app.dataplane.plane import DataPlaneRoutes
from app.errors import install_error_handlers
from app.metrics import RequestMetrics
from app.profiles import ModelProfile, load_profiles
from app.runtime.base import EndpointCache
from app.settings import PROJECT_ROOT

PROFILE = "tabular_regression"
PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
OPEN = Authenticator([], enabled=False)


def tightened(timeout: float | None = None, max_request_bytes: int | None = None,
              profile: str = PROFILE) -> dict[str, ModelProfile]:
    """The project's profiles, with `profile`'s predict timeout and body limit changed."""
    profiles = dict(PROFILES)
    inference = profiles[profile].inference
    assert inference is not None
    update: dict[str, Any] = {}
    if timeout is not None:
        update["predict_timeout_seconds"] = timeout
    if max_request_bytes is not None:
        update["max_request_bytes"] = max_request_bytes
    profiles[profile] = profiles[profile].model_copy(update={"inference": inference.model_copy(update=update)})
    return profiles


class Plane:
    """A DataPlane and the ASGI app it fronts. Use `client()` from a running event loop."""

    def __init__(self, profiles: dict[str, ModelProfile] = PROFILES, authenticator: Authenticator = OPEN,
                 max_predict_bytes: int = 64 << 20, plain_in_flight: int = 256, access_log: AccessLog | None = None):
        self.endpoints = EndpointCache()
        self.plane = DataPlane(Admission(self.endpoints, profiles, authenticator, max_predict_bytes),
                               UpstreamClient(plain_in_flight=plain_in_flight), access_log or AccessLog(False),
                               RequestMetrics())
        management = FastAPI()
        install_error_handlers(management)
        self.management = management
        self.app = DataPlaneRoutes(management, self.plane)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://api", timeout=30)

    async def predict(self, task_id: str, body: bytes, content_type: str = "application/json",
                      **kwargs: Any) -> httpx.Response:
        async with self.client() as client:
            return await client.post(f"/api/v1/inference/{task_id}/predict", content=body,
                                     headers={"content-type": content_type}, **kwargs)

    async def close(self) -> None:
        await self.plane.close()
