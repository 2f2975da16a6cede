"""The predict hot path: task id -> endpoint from memory -> raw bytes forwarded over a pooled client.

No MLflow, cluster or disk access per request, and no parsing of the model payload: the model
server validates it. aiohttp with one keep-alive pool per worker was chosen by measurement
(httpx's defaults cost several times more CPU per forwarded request).
"""

import asyncio

import aiohttp

from app.errors import NotReady, PayloadTooLarge, TaskNotFound, UpstreamError, UpstreamTimeout
from app.profiles import ModelProfile
from app.runtime.base import EndpointCache


class PredictProxy:
    def __init__(self, endpoints: EndpointCache, profiles: dict[str, ModelProfile], pool_size: int = 256):
        self.endpoints = endpoints
        self.profiles = profiles
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._timeouts = {
            name: aiohttp.ClientTimeout(total=p.inference.predict_timeout_seconds)
            for name, p in profiles.items()
            if p.inference is not None
        }
        self._default_timeout = aiohttp.ClientTimeout(total=30)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.pool_size, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding")
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def max_body_bytes(self, task_id: str) -> int | None:
        endpoint = self.endpoints.get(task_id)
        profile = self.profiles.get(endpoint.profile) if endpoint else None
        return profile.inference.max_request_bytes if profile and profile.inference else None

    async def forward(self, task_id: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        """Forward one request; return the upstream's status, body and content type."""
        endpoint = self.endpoints.get(task_id)
        if endpoint is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        if not endpoint.ready:
            raise NotReady(f"deployment '{task_id}' is not ready: {endpoint.message or 'starting'}")
        limit = self.max_body_bytes(task_id)
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(f"predict body is {len(body)} bytes; the profile allows {limit}")
        assert self._session is not None, "proxy not started"
        timeout = self._timeouts.get(endpoint.profile, self._default_timeout)
        # Endpoints reached through the Kubernetes API server carry its credentials and TLS settings.
        headers = {**endpoint.headers, "Content-Type": content_type}
        tls = endpoint.ssl_context if endpoint.ssl_context is not None else True
        for attempt in (1, 2):
            try:
                async with self._session.post(
                    endpoint.base_url + path, data=body, headers=headers, timeout=timeout, ssl=tls
                ) as response:
                    payload = await response.read()
                    status = response.status
                    upstream_type = response.headers.get("Content-Type", "application/json")
                break
            except TimeoutError:
                raise UpstreamTimeout(
                    f"model server of '{task_id}' did not answer within {timeout.total:g} s"
                ) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection the server had closed: predict has no side
                # effects, so one retry on a fresh connection; twice means the server is gone.
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    self.endpoints.mark_unready(task_id, f"model server unreachable: {exc.__class__.__name__}")
                    raise NotReady(f"deployment '{task_id}' is not reachable right now; retry shortly") from None
            except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
                raise UpstreamError(f"model server of '{task_id}' failed: {exc.__class__.__name__}: {exc}") from None
        if status >= 500:
            raise UpstreamError(
                f"model server of '{task_id}' answered {status}: {payload[:500].decode(errors='replace')}"
            )
        return status, payload, upstream_type
