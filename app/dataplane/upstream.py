"""The one HTTP client of the data plane, and the one mapping of what can go wrong upstream.

pyreqwest (Rust's reqwest and hyper under a typed asyncio API) was chosen by measurement: per
forwarded one-row predict it costs the API about 56 µs of CPU, against aiohttp's 98 µs and
httpx's 2.5 ms (docs/benchmarks.md). It keeps a keep-alive pool per model server, streams answers
chunk by chunk, and takes TLS settings as PEM bytes (the cluster's CA, a client certificate).

Bodies go both ways as bytes: no decompression, no redirects, no proxy from the environment, so
what the model server answers is what the caller gets.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import BodyDecodeError, DetailedPyreqwestError, NetworkError, RequestTimeoutError

from app.errors import MlopsError, NotReady, UpstreamError, UpstreamTimeout
from app.runtime.base import Endpoint, EndpointCache, Tls

# Requests in flight per API worker: plain answers, and streams (a streamed generation holds its
# connection for its whole length, so streams have their own share and cannot starve predicts).
PLAIN_IN_FLIGHT = 256
STREAMS_IN_FLIGHT = 64
IDLE_SECONDS = 30  # a pooled connection idle this long is closed rather than reused
CONNECT_SECONDS = 5
USER_AGENT = "mlops-control-plane"


class Failure(Enum):
    UNREACHABLE = "unreachable"  # no connection, or one closed twice before any answer
    TIMEOUT = "timeout"  # no (complete) answer within the profile's timeout
    BROKEN = "broken"  # an answer that is not valid HTTP, or one cut short


class UpstreamFailure(Exception):
    def __init__(self, failure: Failure, detail: str):
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


@dataclass(slots=True)
class StreamedAnswer:
    status: int
    content_type: str
    chunks: AsyncIterator[bytes]


def _cause(exc: DetailedPyreqwestError) -> str:
    causes = (exc.details or {}).get("causes") or []
    return causes[-1]["message"] if causes else exc.message


def _failure(exc: Exception, answered: bool) -> UpstreamFailure:
    """What went wrong; `answered`: some of the answer had arrived (its head), so the connection
    broke mid-answer rather than before it."""
    if isinstance(exc, RequestTimeoutError | TimeoutError):
        return UpstreamFailure(Failure.TIMEOUT, "no answer in time")
    if isinstance(exc, NetworkError) and not answered:
        # Refused, reset or closed before any answer: a server that is gone, or restarting.
        return UpstreamFailure(Failure.UNREACHABLE, _cause(exc))
    if isinstance(exc, DetailedPyreqwestError):
        return UpstreamFailure(Failure.BROKEN, _cause(exc))
    raise exc


class UpstreamClient:
    def __init__(self, plain_in_flight: int = PLAIN_IN_FLIGHT, streams_in_flight: int = STREAMS_IN_FLIGHT):
        self.limits = {False: plain_in_flight, True: streams_in_flight}
        self._clients: dict[tuple[Tls | None, bool], Client] = {}
        self._timeouts: dict[float, timedelta] = {}

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _client(self, tls: Tls | None, streaming: bool) -> Client:
        client = self._clients.get((tls, streaming))
        if client is None:
            builder = (ClientBuilder().max_connections(self.limits[streaming]).user_agent(USER_AGENT)
                       .pool_idle_timeout(timedelta(seconds=IDLE_SECONDS))
                       .connect_timeout(timedelta(seconds=CONNECT_SECONDS)).http1_only().no_proxy()
                       .follow_redirects(False).referer(False)
                       .gzip(False).brotli(False).zstd(False).deflate(False))
            if tls is not None:
                if tls.ca_pem:
                    builder = builder.add_root_certificate_pem(tls.ca_pem)
                if tls.identity_pem:
                    builder = builder.identity_pem(tls.identity_pem)
                if not tls.verify:
                    builder = builder.danger_accept_invalid_certs(True)
            client = self._clients[(tls, streaming)] = builder.build()
        return client

    def _timeout(self, seconds: float) -> timedelta:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = timedelta(seconds=seconds)
        return timeout

    async def send(self, endpoint: Endpoint, method: str, path: str, body: bytes, headers: dict[str, str],
                   timeout: float) -> Answer:
        """One request with its whole answer. Raises UpstreamFailure.

        A request that finds no connection, or whose connection closes before the whole answer (a
        kept-alive one the server had dropped, a server killed between writing an answer's head and
        its body), is sent once more on a new one: predict and the OpenAI routes have no side
        effects to repeat. The second try's failure is the one reported."""
        client = self._client(endpoint.tls, False)
        url = endpoint.base_url + path
        if endpoint.headers:
            headers = {**endpoint.headers, **headers}
        for attempt in (1, 2):
            request = client.request(method, url).headers(headers).timeout(self._timeout(timeout))
            if body:
                request = request.body_bytes(body)
            try:
                response = await request.build().send()  # reads the whole body, so a cut one raises
                payload = await response.bytes()
            except Exception as exc:  # classified here; re-raised if it is not the client's
                # A body cut short is a BodyDecodeError (no decompression is asked for).
                failure = _failure(exc, answered=isinstance(exc, BodyDecodeError))
                if attempt == 1 and (failure.failure is Failure.UNREACHABLE or isinstance(exc, BodyDecodeError)):
                    continue
                raise failure from None
            return Answer(response.status, bytes(payload), response.headers.get("content-type") or "application/json")
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(self, endpoint: Endpoint, method: str, path: str, body: bytes, headers: dict[str, str],
                     timeout: float) -> AsyncIterator[StreamedAnswer]:
        """One request whose answer is read as it arrives: `timeout` bounds the wait for the head
        and for each next chunk, not the whole (a long generation may take minutes). A chunk that
        cannot be read raises UpstreamFailure from the iteration."""
        client = self._client(endpoint.tls, True)
        if endpoint.headers:
            headers = {**endpoint.headers, **headers}
        request = client.request(method, endpoint.base_url + path).headers(headers)
        if body:
            request = request.body_bytes(body)
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout):
                    response = await stack.enter_async_context(request.build_streamed())
            except Exception as exc:
                raise _failure(exc, answered=False) from None
            reader = response.body_reader

            async def chunks() -> AsyncIterator[bytes]:
                while True:
                    try:
                        async with asyncio.timeout(timeout):
                            chunk = await reader.read_chunk()
                    except Exception as exc:
                        raise _failure(exc, answered=True) from None
                    if chunk is None:
                        return
                    yield bytes(chunk)

            yield StreamedAnswer(response.status, response.headers.get("content-type") or "application/json",
                                 chunks())


# How each failure is named in metrics (mlops_upstream_failures_total's `reason`).
REASONS = {Failure.UNREACHABLE: "refused", Failure.TIMEOUT: "timeout", Failure.BROKEN: "broken"}
SERVER_ERROR = "server_error"


def api_error(task_id: str, endpoints: EndpointCache, failure: UpstreamFailure | None = None,
              answer: Answer | None = None, timeout: float | None = None,
              base_url: str | None = None) -> tuple[MlopsError, str]:
    """What the API answers instead of the model server, and the failure's reason: 502 for a 5xx
    or a broken answer, 503 with Retry-After for a server that cannot be reached (the endpoint
    leaves rotation until its next successful probe or watch event), 504 for one too slow."""
    if answer is not None:
        text = answer.body[:500].decode(errors="replace")
        return UpstreamError(f"model server of '{task_id}' answered {answer.status}: {text}"), SERVER_ERROR
    assert failure is not None
    reason = REASONS[failure.failure]
    if failure.failure is Failure.TIMEOUT:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        return UpstreamTimeout(f"model server of '{task_id}' did not answer{within}"), reason
    if failure.failure is Failure.UNREACHABLE:
        endpoints.mark_unready(task_id, f"model server unreachable: {failure.detail}", base_url)
        return NotReady(f"deployment '{task_id}' is not reachable right now; retry shortly"), reason
    return UpstreamError(f"model server of '{task_id}' failed: {failure.detail}"), reason
