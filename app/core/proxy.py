"""The predict hot path: task id -> endpoint from memory -> raw bytes forwarded over a pooled client.

No MLflow, cluster or disk access per request, and no parsing of the model payload: the model
server validates it. The client is a minimal HTTP/1.1 one (asyncio + httptools, the parser
uvicorn uses) with one keep-alive pool per model server and worker, chosen by measurement: on a
one-row predict it costs a fraction of aiohttp's CPU per forwarded request, and httpx's defaults
cost several times aiohttp's (docs/benchmarks.md).
"""

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from app.errors import NotReady, PayloadTooLarge, TaskNotFound, UpstreamError, UpstreamTimeout
from app.profiles import ModelProfile
from app.runtime.base import Endpoint, EndpointCache

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONTENT_TYPE = b"application/json"
# A pooled connection idle this long is closed rather than reused (servers drop idle ones too;
# one that was dropped anyway is noticed and the request retried on a new connection).
IDLE_SECONDS = 30.0


class ConnectionLost(Exception):
    """The model server closed the connection before its answer was complete."""

    def __init__(self, answered: bool):
        super().__init__("the model server closed the connection" + (" mid-answer" if answered else ""))
        self.answered = answered  # some of the answer had arrived


class Unreachable(Exception):
    """No connection to the model server, or it dropped a request twice without answering."""


class BadAnswer(Exception):
    """The model server's answer is not valid HTTP."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, the answer parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._content_type = DEFAULT_CONTENT_TYPE
        self._answered = False
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the answer's end is known without EOF

    async def exchange(self, request: list[bytes]) -> tuple[int, bytes, bytes]:
        """Send one request; its status, body and content type."""
        assert self.transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(request)
        return await self._waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a server that talks out of turn is not reused
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exception=BadAnswer(f"invalid HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            if self._headers_done and not self._framed:
                self.on_message_complete()  # an answer delimited by the end of the connection
            else:
                self._finish(exception=ConnectionLost(self._answered))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value
        elif lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish(result=(self._parser.get_status_code(), b"".join(self._body), self._content_type))

    def _finish(self, result: tuple[int, bytes, bytes] | None = None, exception: Exception | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exception is not None:
            waiter.set_exception(exception)
        else:
            waiter.set_result(result)  # type: ignore[arg-type]


def _header_bytes(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n"):
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


@dataclass(frozen=True)
class _Target:
    """What a pool is for: a base URL with its credentials and TLS settings."""

    base_url: str
    headers: tuple[tuple[str, str], ...]
    ssl_context: ssl.SSLContext | None

    @classmethod
    def of(cls, endpoint: Endpoint) -> "_Target":
        return cls(endpoint.base_url, tuple(endpoint.headers.items()), endpoint.ssl_context)


class _Pool:
    """Keep-alive connections to one model server, at most `limit` at a time."""

    def __init__(self, target: _Target, limit: int):
        url = urlsplit(target.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"cannot forward to {target.base_url!r}: an http:// or https:// URL is needed")
        self.target = target
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.tls = target.ssl_context or ssl.create_default_context()
        self.path_prefix = url.path.rstrip("/").encode()
        self.fixed_headers = f"Host: {url.netloc}\r\n".encode("latin-1") + _header_bytes(dict(target.headers))
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def post(self, path: str, body: bytes, content_type: bytes) -> tuple[int, bytes, bytes]:
        request = [
            b"POST ", self.path_prefix, path.encode(), b" HTTP/1.1\r\n", self.fixed_headers,
            b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ]
        async with self._slots:
            for attempt in (1, 2):
                connection = self._take_idle() or await self._connect()
                try:
                    answer = await connection.exchange(request)
                except ConnectionLost as lost:
                    # Predict has no side effects: a connection dropped before any answer (most
                    # often a pooled one the server had closed) is retried once on a new one.
                    if lost.answered:
                        raise
                    if attempt == 2:
                        raise Unreachable("the model server closed the connection twice without answering") from None
                    continue
                except BaseException:
                    connection.close()  # a timeout or a cancel leaves it mid-request
                    raise
                if connection.reusable:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                else:
                    connection.close()
                return answer
        raise AssertionError("unreachable")

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be dropped
            if connection.reusable and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
            )
        except OSError as exc:
            raise Unreachable(f"cannot connect: {exc.__class__.__name__}: {exc}") from None
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class PredictProxy:
    def __init__(self, endpoints: EndpointCache, profiles: dict[str, ModelProfile], pool_size: int = 256):
        self.endpoints = endpoints
        self.profiles = profiles
        self.pool_size = pool_size
        self._pools: dict[str, _Pool] = {}
        self._timeouts = {
            name: p.inference.predict_timeout_seconds for name, p in profiles.items() if p.inference is not None
        }
        self._limits = {name: p.inference.max_request_bytes for name, p in profiles.items() if p.inference is not None}
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def max_body_bytes(self, task_id: str) -> int | None:
        endpoint = self.endpoints.get(task_id)
        return self._limits.get(endpoint.profile) if endpoint else None

    def _pool(self, endpoint: Endpoint) -> _Pool:
        pool = self._pools.get(endpoint.base_url)
        if pool is not None and (
            pool.target.headers == tuple(endpoint.headers.items()) and pool.target.ssl_context is endpoint.ssl_context
        ):
            return pool
        # New, or its credentials or TLS settings changed (a rotated token): a pool of its own.
        if pool is not None:
            pool.close()
        pool = self._pools[endpoint.base_url] = _Pool(_Target.of(endpoint), self.pool_size)
        return pool

    async def forward(self, task_id: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        """Forward one request; return the upstream's status, body and content type."""
        endpoint = self.endpoints.get(task_id)
        if endpoint is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        if not endpoint.ready:
            raise NotReady(f"deployment '{task_id}' is not ready: {endpoint.message or 'starting'}")
        limit = self._limits.get(endpoint.profile)
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(f"predict body is {len(body)} bytes; the profile allows {limit}")
        assert self._started, "proxy not started"
        timeout = self._timeouts.get(endpoint.profile, DEFAULT_TIMEOUT_SECONDS)
        # A header value cannot hold a line break (the server's parser refuses them); be sure anyway.
        kind = content_type.encode("latin-1", "replace") if "\n" not in content_type and "\r" not in content_type \
            else DEFAULT_CONTENT_TYPE
        try:
            async with asyncio.timeout(timeout):
                status, payload, upstream_type = await self._pool(endpoint).post(path, body, kind)
        except TimeoutError:
            raise UpstreamTimeout(f"model server of '{task_id}' did not answer within {timeout:g} s") from None
        except Unreachable as exc:
            self.endpoints.mark_unready(task_id, f"model server unreachable: {exc}")
            raise NotReady(f"deployment '{task_id}' is not reachable right now; retry shortly") from None
        except (ConnectionLost, BadAnswer) as exc:
            raise UpstreamError(f"model server of '{task_id}' failed: {exc}") from None
        if status >= 500:
            raise UpstreamError(
                f"model server of '{task_id}' answered {status}: {payload[:500].decode(errors='replace')}"
            )
        return status, payload, upstream_type.decode("latin-1")
