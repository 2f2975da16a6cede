"""The predict hot path: task id -> endpoint from memory -> raw bytes forwarded over a pooled client.

No MLflow, cluster or disk access per request, and no parsing of the model payload: the model
server validates it. The client is a minimal HTTP/1.1 one (asyncio + httptools, the parser
uvicorn uses) with one keep-alive pool per model server and worker, chosen by measurement: on a
one-row predict it costs a fraction of aiohttp's CPU per forwarded request, and httpx's defaults
cost several times aiohttp's (docs/benchmarks.md).

The client is driven by callbacks, not coroutines: `PredictProxy.submit` sends a request and calls
back with the answer, with no task or future per request, which is what lets the API's predict
protocol (app/predict_protocol.py) forward at nearly the model server's own rate.
`PredictProxy.forward` is the same for coroutines.
"""

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from app.errors import MlopsError, NotReady, PayloadTooLarge, TaskNotFound, UpstreamError, UpstreamTimeout
from app.profiles import ModelProfile
from app.runtime.base import Endpoint, EndpointCache

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONTENT_TYPE = b"application/json"
# A pooled connection idle this long is closed rather than reused (servers drop idle ones too;
# one that was dropped anyway is noticed and the request retried on a new connection).
IDLE_SECONDS = 30.0

Answer = tuple[int, bytes, bytes]  # status, body, content type
# Called once per request: with the answer, or with the exception that ended it.
OnAnswer = Callable[[Answer | None, BaseException | None], None]


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
        self._on_answer: OnAnswer | None = None
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._content_type = DEFAULT_CONTENT_TYPE
        self._answered = False
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the answer's end is known without EOF

    def send(self, request: list[bytes], on_answer: OnAnswer) -> None:
        """Write one request; `on_answer` is called once, with its status, body and content type."""
        assert self.transport is not None
        self._reset()
        self._on_answer = on_answer
        self.transport.writelines(request)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._on_answer is None:
            self.close()  # nothing was asked: a server that talks out of turn is not reused
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            self._finish(None, BadAnswer(f"invalid HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._on_answer is not None:
            if self._headers_done and not self._framed:
                self.on_message_complete()  # an answer delimited by the end of the connection
            else:
                self._finish(None, ConnectionLost(self._answered))

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
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._finish((self._parser.get_status_code(), body, self._content_type), None)

    def _finish(self, answer: Answer | None, exception: BaseException | None) -> None:
        on_answer, self._on_answer = self._on_answer, None
        if on_answer is not None:
            on_answer(answer, exception)


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


class Exchange:
    """One request to one model server, from submission to its single callback: waits for a
    connection when the pool is at its limit, is retried once on a new connection when a kept-alive
    one turns out closed, and ends at its deadline."""

    __slots__ = ("_attempt", "_connection", "_on_answer", "_pool", "_request", "_timer", "done")

    def __init__(self, pool: "_Pool", request: list[bytes], on_answer: OnAnswer, timeout: float):
        self._pool = pool
        self._request = request
        self._on_answer = on_answer
        self._connection: _Connection | None = None
        self._attempt = 1
        self.done = False
        self._timer = pool.loop.call_later(timeout, self._expire)

    def cancel(self) -> None:
        """Stop waiting for the answer (the caller's timeout or cancellation): a connection left
        mid-request is closed, never reused. No callback follows."""
        if self.done:
            return
        self.done = True
        self._timer.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            self._pool.release(connection)
        else:
            self._pool.forget(self)

    def _expire(self) -> None:
        if not self.done:
            self.cancel()
            self._on_answer(None, TimeoutError())

    def start(self, connection: _Connection) -> None:
        if self.done:  # cancelled while it waited for this connection
            self._pool.release(connection)
            return
        self._connection = connection
        connection.send(self._request, self._answered)

    def fail(self, exception: BaseException) -> None:
        if not self.done:
            self.done = True
            self._timer.cancel()
            self._on_answer(None, exception)

    def _answered(self, answer: Answer | None, exception: BaseException | None) -> None:
        connection, self._connection = self._connection, None
        if connection is None or self.done:
            return
        if isinstance(exception, ConnectionLost) and not exception.answered:
            # Predict has no side effects: a request dropped before any answer (most often on a
            # kept-alive connection the server had closed) is retried once, on a new connection;
            # the other idle ones are likely stale too (a restarted server), so they go as well.
            self._pool.release(connection)
            if self._attempt == 1:
                self._attempt = 2
                self._pool.drop_idle()
                self._pool.dispatch(self)
                return
            exception = Unreachable("the model server closed the connection twice without answering")
        else:
            self._pool.release(connection)
        self.done = True
        self._timer.cancel()
        self._on_answer(answer, exception)


class _Pool:
    """Keep-alive connections to one model server, at most `limit` at a time; requests beyond that
    wait, in order, for one to come back."""

    def __init__(self, target: _Target, limit: int):
        url = urlsplit(target.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"cannot forward to {target.base_url!r}: an http:// or https:// URL is needed")
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.tls = target.ssl_context or ssl.create_default_context()
        self.path_prefix = url.path.rstrip("/").encode()
        self.fixed_headers = f"Host: {url.netloc}\r\n".encode("latin-1") + _header_bytes(dict(target.headers))
        self.limit = limit
        self._open = 0  # connections in use, idle or being made
        self._idle: list[_Connection] = []
        self._waiting: deque[Exchange] = deque()
        self._closed = False
        self.endpoint: Endpoint | None = None  # the last endpoint found to use this pool

    def post(self, path: str, body: bytes, content_type: bytes, on_answer: OnAnswer, timeout: float) -> Exchange:
        request = [
            b"POST ", self.path_prefix, path.encode(), b" HTTP/1.1\r\n", self.fixed_headers,
            b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ]
        exchange = Exchange(self, request, on_answer, timeout)
        self.dispatch(exchange)
        return exchange

    def dispatch(self, exchange: Exchange) -> None:
        connection = self._take_idle()
        if connection is not None:
            exchange.start(connection)
        elif self._open < self.limit:
            self._open += 1
            self.loop.create_task(self._connect(exchange))
        else:
            self._waiting.append(exchange)

    def release(self, connection: _Connection) -> None:
        """A connection its request is done with: to the next waiting request, to the idle list,
        or closed."""
        if connection.reusable and not self._closed:
            while self._waiting:
                exchange = self._waiting.popleft()
                if not exchange.done:
                    exchange.start(connection)
                    return
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
            return
        connection.close()
        self._open -= 1
        while self._waiting and self._open < self.limit:
            exchange = self._waiting.popleft()
            if not exchange.done:
                self._open += 1
                self.loop.create_task(self._connect(exchange))

    def forget(self, exchange: Exchange) -> None:
        # Not there: it was being connected for; the connection goes to the pool when made.
        with contextlib.suppress(ValueError):
            self._waiting.remove(exchange)

    def drop_idle(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            connection.close()
            self._open -= 1

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be dropped
            if connection.reusable and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
            self._open -= 1
        return None

    async def _connect(self, exchange: Exchange) -> None:
        try:
            _, connection = await self.loop.create_connection(
                _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
            )
        except OSError as exc:
            self._open -= 1
            exchange.fail(Unreachable(f"cannot connect: {exc.__class__.__name__}: {exc}"))
            return
        exchange.start(connection)

    def close(self) -> None:
        self._closed = True
        self.drop_idle()
        while self._waiting:
            self._waiting.popleft().fail(Unreachable("the API is shutting down"))


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
        if pool is not None and pool.endpoint is endpoint:
            return pool
        if pool is not None and (
            pool.target.headers == tuple(endpoint.headers.items()) and pool.target.ssl_context is endpoint.ssl_context
        ):
            pool.endpoint = endpoint  # the same target: the next lookup is an identity check
            return pool
        # New, or its credentials or TLS settings changed (a rotated token): a pool of its own.
        if pool is not None:
            pool.close()
        pool = self._pools[endpoint.base_url] = _Pool(_Target.of(endpoint), self.pool_size)
        pool.endpoint = endpoint
        return pool

    def submit(self, task_id: str, path: str, body: bytes, content_type: bytes, on_answer: OnAnswer) -> Exchange:
        """Forward one request without waiting for it: `on_answer` gets the upstream's answer or the
        exception that ended it (`failure` says what the API answers then). Raises the API error
        for a request that cannot be sent (unknown task, not ready, too large)."""
        endpoint = self.endpoints.get(task_id)
        if endpoint is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        if not endpoint.ready:
            raise NotReady(f"deployment '{task_id}' is not ready: {endpoint.message or 'starting'}")
        limit = self._limits.get(endpoint.profile)
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(f"predict body is {len(body)} bytes; the profile allows {limit}")
        assert self._started, "proxy not started"
        # A header value cannot hold a line break (the server's parser refuses them); be sure anyway.
        if b"\n" in content_type or b"\r" in content_type:
            content_type = DEFAULT_CONTENT_TYPE
        timeout = self._timeouts.get(endpoint.profile, DEFAULT_TIMEOUT_SECONDS)
        return self._pool(endpoint).post(path, body, content_type, on_answer, timeout)

    def failure(self, task_id: str, answer: Answer | None, exception: BaseException | None) -> MlopsError | None:
        """What the API answers instead of the model server's answer: None for an answer to pass on
        as it is, else a 502 (a 5xx answer, a broken one), 503 (unreachable) or 504 (too slow)."""
        if answer is not None:
            status, payload, _ = answer
            if status < 500:
                return None
            return UpstreamError(f"model server of '{task_id}' answered {status}: "
                                 f"{payload[:500].decode(errors='replace')}")
        if isinstance(exception, TimeoutError):
            endpoint = self.endpoints.get(task_id)
            timeout = self._timeouts.get(endpoint.profile if endpoint else "", DEFAULT_TIMEOUT_SECONDS)
            return UpstreamTimeout(f"model server of '{task_id}' did not answer within {timeout:g} s")
        if isinstance(exception, Unreachable):
            self.endpoints.mark_unready(task_id, f"model server unreachable: {exception}")
            return NotReady(f"deployment '{task_id}' is not reachable right now; retry shortly")
        return UpstreamError(f"model server of '{task_id}' failed: {exception}")

    async def forward(self, task_id: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        """Forward one request; return the upstream's status, body and content type."""
        future: asyncio.Future[tuple[int, bytes, str]] = asyncio.get_running_loop().create_future()

        def answered(answer: Answer | None, exception: BaseException | None) -> None:
            if future.done():
                return
            error = self.failure(task_id, answer, exception)
            if error is not None:
                future.set_exception(error)
            else:
                assert answer is not None
                future.set_result((answer[0], answer[1], answer[2].decode("latin-1")))

        exchange = self.submit(task_id, path, body, content_type.encode("latin-1", "replace"), answered)
        try:
            return await future
        except asyncio.CancelledError:
            exchange.cancel()  # a connection left mid-request is closed, not reused
            raise
