"""The API's HTTP protocol: uvicorn's, with predict calls forwarded straight from the parser.

A predict call through ASGI pays for a task, the scope, the receive and send messages and three
middleware layers: together several times the cost of forwarding the bytes, which is what kept
the proxy far below the model server's own rate (docs/benchmarks.md). Here, a predict call that
everything agrees with (method, path, a known Ready endpoint of a tabular model, the token, a
declared length within the limits) is taken as soon as its headers are parsed: the body is
collected by the parser callbacks, handed to the pooled client (PredictProxy.submit), and the
answer written back from the client's callback, with no task, future or ASGI message on the way.

Every other request, and any predict call that is not plainly good (no or wrong token, too large,
chunked, unknown or unready task, a language model), goes the usual way through the ASGI app,
which answers it exactly as before; so do requests pipelined behind one still in flight. Answers
keep the shape of the ASGI path's, uvicorn's default headers and its access log line included.
"""

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.access_log import AccessLog
from app.core.auth import Authenticator
from app.core.proxy import Answer, PredictProxy
from app.errors import MlopsError, error_json
from app.profiles import ModelProfile

PREDICT_PREFIX = b"/api/v1/inference/"
PREDICT_SUFFIX = b"/predict"


class PredictLane:
    """What the protocol needs to take a predict call itself: the same checks the middleware and
    the predict route make, from memory. One per API worker (built by create_app)."""

    def __init__(self, proxy: PredictProxy, profiles: dict[str, ModelProfile], authenticator: Authenticator,
                 max_predict_bytes: int):
        self.proxy = proxy
        self.authenticator = authenticator
        # The largest body each profile may take here: the API's limit and the profile's, whichever
        # is smaller. Language models are not listed: their predict body is mapped, not forwarded.
        self.limits = {name: min(max_predict_bytes, profile.inference.max_request_bytes)
                       for name, profile in profiles.items() if profile.inference is not None and profile.llm is None}
        self.access_log = AccessLog()
        self.served = 0  # predict calls answered here rather than through ASGI (tests read it)

    def admit(self, url: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes] | None:
        """The task id and content type of a predict call to take here; None to leave the request
        to the ASGI app."""
        if not (url.startswith(PREDICT_PREFIX) and url.endswith(PREDICT_SUFFIX)):
            return None
        length: int | None = None
        content_type = b"application/json"
        authorization: bytes | None = None
        for name, value in headers:  # names arrive lowercased
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
            elif name == b"transfer-encoding":
                return None
        # Only a plain task id finds an endpoint: a query, an escape or another segment does not.
        task_id = url[len(PREDICT_PREFIX):-len(PREDICT_SUFFIX)].decode("ascii", "replace")
        endpoint = self.proxy.endpoints.get(task_id)
        if length is None or endpoint is None or not endpoint.ready:
            return None
        limit = self.limits.get(endpoint.profile)
        if limit is None or length > limit:
            return None
        if self.authenticator.enabled and self.authenticator.role_of(
                authorization.decode("latin-1") if authorization is not None else None) is None:
            return None
        return task_id, content_type


def find_lane(app: Any) -> PredictLane | None:
    """The lane of the API app under uvicorn's wrappers (each keeps the app it wraps in `.app`)."""
    for _ in range(10):
        state = getattr(app, "state", None)
        lane = getattr(state, "predict_lane", None) if state is not None else None
        if isinstance(lane, PredictLane):
            return lane
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class _NoEvent:
    def set(self) -> None:
        pass


class _LaneRequest:
    """A predict call taken by the lane. It stands where uvicorn keeps its request cycle, so that
    uvicorn's own bookkeeping (pipelining, disconnects, graceful shutdown) applies to it."""

    message_event = _NoEvent()  # uvicorn sets it when the client disconnects

    def __init__(self, protocol: "PredictProtocol", proxy: PredictProxy, task_id: str, content_type: bytes,
                 keep_alive: bool, http_version: str):
        self.protocol = protocol
        self.proxy = proxy
        self.task_id = task_id
        self.content_type = content_type
        self.keep_alive = keep_alive
        self.http_version = http_version
        self.chunks: list[bytes] = []
        self.response_complete = False
        self.disconnected = False

    def dispatch(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        try:
            self.proxy.submit(self.task_id, "/predict", body, self.content_type, self.answer)
        except MlopsError as exc:  # the endpoint changed while the body arrived
            self.fail(exc)

    def answer(self, answer: Answer | None, exception: BaseException | None) -> None:
        if answer is not None and answer[0] < 500:
            self.protocol.lane_respond(self, answer[0], [b"content-type: ", answer[2], b"\r\n"], answer[1])
            return
        error = self.proxy.failure(self.task_id, answer, exception)
        assert error is not None
        self.fail(error)

    def fail(self, error: MlopsError) -> None:
        head = [b"content-type: application/json\r\n"]
        for name, value in error.headers.items():
            head += [name.lower().encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        self.protocol.lane_respond(self, error.status_code, head, error_json(error))


class PredictProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the predict lane in front of the ASGI app."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.lane = find_lane(self.app) if config.limit_concurrency is None else None
        self.lane_request: _LaneRequest | None = None  # the one whose body is arriving

    def on_headers_complete(self) -> None:
        lane = self.lane
        if (lane is not None and self.parser.get_method() == b"POST" and not self.parser.should_upgrade()
                and (self.cycle is None or self.cycle.response_complete) and not self.pipeline):
            admitted = lane.admit(self.url, self.headers)
            if admitted is not None:
                task_id, content_type = admitted
                http_version = self.parser.get_http_version()
                keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
                request = _LaneRequest(self, lane.proxy, task_id, content_type, keep_alive, http_version)
                self.cycle = request  # type: ignore[assignment]
                self.lane_request = request
                if self.expect_100_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.lane_request is not None:
            self.lane_request.chunks.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        request = self.lane_request
        if request is None:
            return super().on_message_complete()
        self.lane_request = None
        request.dispatch()

    def lane_respond(self, request: _LaneRequest, status: int, head: list[bytes], payload: bytes) -> None:
        """Write a lane request's answer, then let uvicorn go on: the next pipelined request, or the
        keep-alive timer."""
        if request.response_complete:
            return
        request.response_complete = True
        if request.disconnected or self.transport.is_closing():
            return
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += head
        content += [b"content-length: ", str(len(payload)).encode(), b"\r\n"]
        if not request.keep_alive:
            content.append(b"connection: close\r\n")
        content += [b"\r\n", payload]
        self.transport.write(b"".join(content))
        lane = self.lane
        assert lane is not None
        if self.access_log:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
            path = f"/api/v1/inference/{request.task_id}/predict"
            lane.access_log.log(client, "POST", path, request.http_version, status)
        lane.served += 1
        if not request.keep_alive:
            self.transport.close()
        self.on_response_complete()
