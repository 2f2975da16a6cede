"""The data plane's ASGI layer: the outermost of the API, in front of the FastAPI application, so a
predict call pays for one dispatch, not for FastAPI's routing and middleware stack
(docs/benchmarks.md). Every other request goes on to the management app untouched."""

import asyncio
import contextlib
import random
import time
from dataclasses import replace
from typing import Any

from app.access_log import AccessLog
from app.dataplane import language
from app.dataplane.admission import Admission, Admitted
from app.dataplane.calls import Call, CallObserver
from app.dataplane.revision_stats import RevisionStats
from app.dataplane.routes import Kind, Match, match
from app.dataplane.upstream import Answer, StreamedAnswer, UpstreamClient, UpstreamFailure, api_error
from app.errors import MlopsError, PayloadTooLarge, send_error
from app.metrics import RequestMetrics
from app.request_ids import HEADER as REQUEST_ID
from app.request_ids import current, request_id
from app.runtime.base import Endpoint

# Names the revision whose model answered (the stable one's, or a canary's).
REVISION = b"x-mlops-revision"

Scope = dict[str, Any]
JSON = "application/json"
# Streamed answers must reach the caller as they are made: no cache, no proxy buffering (nginx).
EVENT_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    """The caller disconnected before its body was complete."""


class MethodNotAllowed(MlopsError):
    status_code, code = 405, "method_not_allowed"

    def __init__(self, allowed: str):
        super().__init__("Method Not Allowed", headers={"Allow": allowed})


async def read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"predict body is over {limit} bytes, the profile's limit")
            chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class DataPlane:
    def __init__(self, admission: Admission, upstream: UpstreamClient, access_log: AccessLog,
                 metrics: RequestMetrics, revisions: RevisionStats | None = None):
        self.admission = admission
        self.endpoints = admission.endpoints
        self.upstream = upstream
        self.revisions = revisions or RevisionStats()
        self.calls = CallObserver(access_log, metrics, self.revisions)
        # Calls in flight per model server (base URL), for the choice between replicas.
        self.in_flight: dict[str, int] = {}
        self._turn = 0

    async def close(self) -> None:
        await self.upstream.close()

    def choose_upstream(self, admitted: Admitted) -> Endpoint:
        """The model server that answers this call: the stable revision's, or, while a ready canary
        runs, the canary's for its weight in percent of the calls."""
        canary = self.endpoints.canary(admitted.endpoint.task_id)
        if canary is not None and canary.endpoint.ready and random.random() * 100 < canary.weight:
            return canary.endpoint
        endpoint = admitted.endpoint
        if not endpoint.alternates:
            return endpoint
        # Several replicas: the one with the fewest calls in flight (ties go round in turn).
        urls = (endpoint.base_url, *endpoint.alternates)
        self._turn = (self._turn + 1) % len(urls)
        chosen = min(urls[self._turn:] + urls[:self._turn], key=lambda url: self.in_flight.get(url, 0))
        return endpoint if chosen == endpoint.base_url else replace(endpoint, base_url=chosen)

    async def serve(self, found: Match, scope: Scope, receive: Any, send: Any) -> None:
        """Answer one data-plane call; it is observed once, whatever its end."""
        declared = authorization = sent_id = None
        content_type = JSON
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == REQUEST_ID:
                sent_id = value
        call = Call(found.task_id, found.route, scope, request_id(sent_id), time.perf_counter())
        scope["path_params"] = {"task_id": found.task_id}
        current.set((call.request_id, scope))  # for any log line written while it is served
        answer_headers = [(REQUEST_ID, call.request_id.encode())]
        try:
            if found.route is None:
                raise MethodNotAllowed(found.allowed)
            admitted = self.admission.admit(found.task_id, found.route, authorization,
                                             int(declared) if declared and declared.isdigit() else None,
                                             scope["method"], scope["path"])
            body = await read_body(receive, admitted.body_limit)
            endpoint = self.choose_upstream(admitted)
            call.upstream, call.model_id, call.revision = endpoint.base_url, endpoint.model_id or "", endpoint.revision
            self.in_flight[endpoint.base_url] = self.in_flight.get(endpoint.base_url, 0) + 1
            if endpoint.revision is not None:  # which revision answered (a canary's, or the stable one's)
                answer_headers.append((REVISION, str(endpoint.revision).encode()))
            headers = {"content-type": content_type, "x-request-id": call.request_id}
            if found.route.kind is Kind.OPENAI:
                await self._pass_through(call, endpoint, found.route.upstream_path, body, headers, admitted, receive,
                                         send, answer_headers)
                return
            if admitted.language_model:
                route, body = language.openai_request(body, endpoint.served_model_name)
                headers["content-type"] = JSON
            else:
                route = found.route.upstream_path
            try:
                answer = await self.upstream.send(endpoint, "POST", route, body, headers, admitted.timeout)
            except UpstreamFailure as failure:
                raise self._failed(call, failure=failure, timeout=admitted.timeout) from None
            if answer.status >= 500:
                raise self._failed(call, answer=answer)
            payload, answer_type = answer.body, answer.content_type
            if admitted.language_model and answer.status == 200:
                payload, answer_type = language.predictions(call.task_id, payload, "chat" in route), JSON
            call.status = answer.status
            await send({"type": "http.response.start", "status": answer.status, "headers": [
                (b"content-type", answer_type.encode("latin-1")), (b"content-length", str(len(payload)).encode()),
                *answer_headers]})
            await send({"type": "http.response.body", "body": payload})
        except MlopsError as exc:
            call.status = exc.status_code
            await send_error(send, exc, answer_headers)
        except ClientGone:
            call.status, call.outcome = 499, "the client left before its body was complete"
        except Exception:
            call.status = call.status or 500  # a defect: uvicorn answers 500 and logs the traceback
            raise
        finally:
            if call.upstream is not None:
                self.in_flight[call.upstream] -= 1
            # Seen on the loop's next turn, once uvicorn is done with this answer (see
            # script/inference_app.py: measured, cheaper than here).
            asyncio.get_running_loop().call_soon(self.calls.observe, call, time.perf_counter())

    def _failed(self, call: Call, failure: UpstreamFailure | None = None, answer: Answer | None = None,
                timeout: float | None = None) -> MlopsError:
        error, call.failure = api_error(call.task_id, self.endpoints, failure, answer, timeout, call.upstream)
        return error

    async def _pass_through(self, call: Call, endpoint: Endpoint, path: str, body: bytes, headers: dict[str, str],
                            admitted: Admitted, receive: Any, send: Any,
                            answer_headers: list[tuple[bytes, bytes]]) -> None:
        """An OpenAI route: the model server's answer, chunk by chunk as it arrives (server-sent
        events are never buffered). A stream the model server breaks is broken for the caller too,
        never ended like a short answer; a caller that leaves stops the generation."""
        method = call.scope["method"]
        try:
            async with self.upstream.stream(endpoint, method, path, body, headers, admitted.timeout) as answer:
                if answer.status >= 500:
                    text = b"".join([chunk async for chunk in answer.chunks])
                    raise self._failed(call, answer=Answer(answer.status, text, answer.content_type))
                call.status = answer.status
                head = [(b"content-type", answer.content_type.encode("latin-1")), *answer_headers]
                if "event-stream" in answer.content_type:
                    head += EVENT_STREAM_HEADERS
                await send({"type": "http.response.start", "status": answer.status, "headers": head})
                if not await _forward_until_gone(answer, receive, send):
                    call.outcome = "the client left mid-answer"
                    return
        except UpstreamFailure as failure:
            if call.status:  # the answer had begun: end the connection without completing it
                call.outcome, call.failure = f"the model server broke the answer: {failure.detail}", "broken"
                return
            raise self._failed(call, failure=failure, timeout=admitted.timeout) from None
        await send({"type": "http.response.body", "body": b""})


async def _forward_until_gone(answer: StreamedAnswer, receive: Any, send: Any) -> bool:
    """Send each chunk as it comes; False as soon as the caller disconnects (the stream is left)."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        async for chunk in answer.chunks:
            if gone.done():
                return False
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        return not gone.done()
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DataPlaneRoutes:
    """The API's ASGI application: the data plane's routes are served by `plane`, every other
    request (and the lifespan) by `app`, the FastAPI application."""

    def __init__(self, app: Any, plane: DataPlane):
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            found = match(scope["method"], scope["path"])
            if found is not None:
                return await self.plane.serve(found, scope, receive, send)
        await self.app(scope, receive, send)
