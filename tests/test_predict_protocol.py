"""The API's HTTP protocol (app/predict_protocol.py) under a real uvicorn server: predict calls taken
from the parser answer exactly as the FastAPI route does; anything unusual goes through ASGI;
pipelining, Connection: close, Expect: 100-continue, auth, disconnects and shutdown behave; and the
batched access log writes the lines uvicorn would."""

import asyncio
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.testclient import TestClient
from uvicorn.logging import AccessFormatter

from app.access_log import AccessLog
from app.core.auth import Authenticator, parse_token_entries
from app.middleware import AuthMiddleware, BodyLimitMiddleware
from app.predict_protocol import PredictLane, PredictProtocol
from app.routers import health
from tests.test_predict_path import CASES, model_server, predict_app

ADMIN, PREDICTOR = "a" * 20, "p" * 20
OPEN = Authenticator([], enabled=False)


def lane_app(url: str, authenticator: Authenticator = OPEN, max_predict_bytes: int = 1 << 20) -> FastAPI:
    """predict_app (the inference router, a 0.3 s timeout, a 100-byte profile limit) with the
    middleware create_app adds, and the lane."""
    app = predict_app(url, fast_path=True)
    app.include_router(health.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=1 << 20, max_predict_bytes=max_predict_bytes)
    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    app.state.predict_lane = PredictLane(app.state.proxy, app.state.proxy.profiles, authenticator,
                                         max_predict_bytes)
    return app


@contextmanager
def serve(app: FastAPI, **config: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """`app` under uvicorn with the predict protocol, in a thread, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=PredictProtocol, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def lane(app: FastAPI) -> PredictLane:
    return app.state.predict_lane


def _case_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    if isinstance(kwargs.get("content"), Iterator):
        return {"content": iter([b"x" * 60, b"x" * 60])}  # a fresh generator per client
    return kwargs


def test_predicts_answer_exactly_as_the_fastapi_route() -> None:
    def answer(response: httpx.Response) -> tuple[int, str, bytes, str | None]:
        return (response.status_code, response.headers.get("content-type", ""), response.content,
                response.headers.get("retry-after"))

    with model_server() as upstream:
        with TestClient(predict_app(upstream, fast_path=False)) as client:
            expected = [answer(client.request(method, path, **_case_kwargs(kwargs))) for method, path, kwargs in CASES]
        app = lane_app(upstream)
        with serve(app) as (url, _), httpx.Client(base_url=url) as client:
            got = [answer(client.request(method, path, **_case_kwargs(kwargs))) for method, path, kwargs in CASES]
            # The four plain predicts (200, 422, 502, 504) were taken by the lane; the rest by ASGI.
            assert lane(app).served == 4
            headers = client.post("/api/v1/inference/ready/predict", json={"data": {"features": [[1]]}}).headers
    assert got == expected
    assert headers["server"] == "uvicorn" and "date" in headers and headers["content-length"] == "20"


def raw_exchange(url: str, data: bytes, answers: int, timeout: float = 5.0) -> tuple[list[bytes], bool]:
    """Write `data` on one connection; read `answers` HTTP answers (Content-Length framed, 1xx
    skipped) and whether the server then closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        buffer, out = b"", []
        while len(out) < answers:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(out)} answers: {buffer!r}"
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 1"):
                out.append(head)
                continue
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")))
            while len(buffer) < length:
                buffer += sock.recv(65536)
            out.append(head + b"\r\n\r\n" + buffer[:length])
            buffer = buffer[length:]
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return out, closed


def predict_request(body: bytes = b'{"data": {"features": [[1, 2]]}}', task: str = "ready", extra: bytes = b"",
                    version: bytes = b"1.1") -> bytes:
    return (b"POST /api/v1/inference/" + task.encode() + b"/predict HTTP/" + version + b"\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra +
            b"\r\n" + body)


def test_pipelined_requests_are_answered_in_order_across_the_lane_and_asgi() -> None:
    with model_server() as upstream:
        app = lane_app(upstream)
        with serve(app) as (url, _):
            pipelined = (predict_request(b"slow") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                         + predict_request() + predict_request(b'{"data": {"features": [[5]]}}'))
            answers, closed = raw_exchange(url, pipelined, 4)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 504 Gateway Timeout", b"HTTP/1.1 200 OK",
                                                         b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b'"upstream_timeout"' in answers[0] and b'"status"' in answers[1]
    assert answers[2].endswith(b'{"predictions": [3]}') and answers[3].endswith(b'{"predictions": [5]}')
    assert not closed


def test_connection_close_http_1_0_and_expect_100_continue() -> None:
    with model_server() as upstream:
        app = lane_app(upstream)
        with serve(app) as (url, _):
            answers, closed = raw_exchange(url, predict_request(extra=b"Connection: close\r\n"), 1)
            assert closed and b"\r\nconnection: close\r\n" in answers[0] and answers[0].endswith(b"[3]}")
            answers, closed = raw_exchange(url, predict_request(version=b"1.0"), 1)
            assert closed and answers[0].endswith(b"[3]}")
            head = predict_request(extra=b"Expect: 100-continue\r\n")
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                headers, body = head.split(b"\r\n\r\n", 1)
                sock.sendall(headers + b"\r\n\r\n")
                assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
                sock.sendall(body)
                assert sock.recv(1000).endswith(b'{"predictions": [3]}')
            assert lane(app).served == 3


def test_tokens_are_checked_and_refusals_come_from_the_api() -> None:
    authenticator = Authenticator(parse_token_entries(f"admin:{ADMIN},predict:{PREDICTOR}", "test"), enabled=True)
    with model_server() as upstream:
        app = lane_app(upstream, authenticator)
        with serve(app) as (url, _), httpx.Client(base_url=url) as client:
            path, body = "/api/v1/inference/ready/predict", {"data": {"features": [[1]]}}
            assert client.post(path, json=body).status_code == 401
            assert client.post(path, json=body, headers={"Authorization": "Bearer wrong-token-000000"}
                               ).status_code == 401
            assert lane(app).served == 0
            for token in (PREDICTOR, ADMIN):
                response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 200 and response.json() == {"predictions": [1]}
            assert lane(app).served == 2


def test_the_body_limit_of_the_api_applies_too() -> None:
    with model_server() as upstream:
        app = lane_app(upstream, max_predict_bytes=30)
        with serve(app) as (url, _), httpx.Client(base_url=url) as client:
            response = client.post("/api/v1/inference/ready/predict", content=b'{"data": {"features": [[1, 2]]}}')
            assert response.status_code == 413 and lane(app).served == 0


def test_the_lane_takes_tabular_profiles_within_the_smaller_limit_and_no_language_model() -> None:
    app = lane_app("http://127.0.0.1:9", max_predict_bytes=50)
    limits = lane(app).limits
    assert limits["tabular_regression"] == 50  # the API's limit, under the test profile's 100
    assert limits["tabular_classification"] == 50
    assert "llm_chat" not in limits and "llm_lora" not in limits  # their predict body is mapped
    assert lane_app("http://127.0.0.1:9", max_predict_bytes=1 << 30).state.predict_lane.limits[
        "tabular_regression"] == 100


def test_a_client_that_leaves_mid_predict_harms_nothing() -> None:
    with model_server() as upstream:
        app = lane_app(upstream)
        with serve(app) as (url, _):
            host, port = url.removeprefix("http://").split(":")
            for _ in range(3):
                with socket.create_connection((host, int(port))) as sock:
                    sock.sendall(predict_request(b"slow"))  # answered after the client is gone
            time.sleep(0.5)
            with httpx.Client(base_url=url) as client:
                for _ in range(5):
                    assert client.post("/api/v1/inference/ready/predict",
                                       json={"data": {"features": [[2]]}}).json() == {"predictions": [2]}


def test_an_unreachable_model_server_is_503_with_retry_after_and_leaves_rotation() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, not listening: refused
        app = lane_app(dead)
        with serve(app) as (url, _), httpx.Client(base_url=url) as client:
            response = client.post("/api/v1/inference/ready/predict", json={})
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "not_ready"
            assert not app.state.proxy.endpoints.get("ready").ready


def test_shutdown_waits_for_a_predict_in_flight() -> None:
    with model_server() as upstream:
        app = lane_app(upstream)
        proxy = app.state.proxy
        proxy._timeouts = {name: 5.0 for name in proxy._timeouts}  # "slow" takes 1 s: not a timeout
        with serve(app, timeout_graceful_shutdown=10) as (url, server):
            result: list[bytes] = []
            thread = threading.Thread(target=lambda: result.extend(raw_exchange(url, predict_request(b"slow"), 1)[0]))
            thread.start()
            time.sleep(0.3)
            server.should_exit = True
            thread.join(10)
    assert result and result[0].startswith(b"HTTP/1.1 200 OK") and b"\r\nconnection: close\r\n" in result[0]


# -- the access log ----------------------------------------------------------------------------------


def access_logger(name: str, formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, stream


LINES = [("127.0.0.1:4000", "POST", "/api/v1/inference/a/predict", "1.1", 200),
         ("10.0.0.7:51234", "POST", "/api/v1/inference/b-2/predict", "1.1", 422),
         ("127.0.0.1:4001", "POST", "/api/v1/inference/a/predict", "1.0", 504)]


@pytest.mark.parametrize("colors", [False, True])
def test_batched_access_lines_are_the_lines_uvicorn_writes(colors: bool) -> None:
    fmt = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    reference, expected = access_logger(f"test.access.reference.{colors}", AccessFormatter(fmt, use_colors=colors))
    batched, got = access_logger(f"test.access.batched.{colors}", AccessFormatter(fmt, use_colors=colors))
    log = AccessLog(batched)

    async def main() -> None:
        for line in LINES * 2:
            reference.info('%s - "%s %s HTTP/%s" %d', *line)
            log.log(*line)
        assert got.getvalue() == ""  # written once the loop turns
        await asyncio.sleep(0)

    asyncio.run(main())
    assert got.getvalue() == expected.getvalue() and len(got.getvalue().splitlines()) == 6
    assert "200 OK" in got.getvalue() and "504 Gateway Timeout" in got.getvalue()


def test_a_log_format_with_times_is_logged_line_by_line() -> None:
    logger, stream = access_logger("test.access.timed", logging.Formatter("%(asctime)s %(message)s"))
    log = AccessLog(logger)
    log.log(*LINES[0])  # no event loop needed: written at once, through the logger
    assert stream.getvalue().rstrip().endswith('127.0.0.1:4000 - "POST /api/v1/inference/a/predict HTTP/1.1" 200')
    logger.setLevel(logging.WARNING)
    log.log(*LINES[1])
    assert len(stream.getvalue().splitlines()) == 1


def test_the_api_app_carries_a_lane() -> None:
    from app.predict_protocol import find_lane

    app = lane_app("http://127.0.0.1:9")
    wrapped = type("Wrapper", (), {"app": app})()
    assert find_lane(wrapped) is lane(app)


def test_python_m_app_serves_with_the_predict_protocol(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import app.__main__ as launcher

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(launcher.uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("MLOPS_MLFLOW_URI", "http://127.0.0.1:9")  # no embedded MLflow
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path))
    assert launcher.main() == 0
    config = uvicorn.Config("app.main:create_app", factory=True, http=calls[0]["http"])
    config.load()
    assert config.http_protocol_class is PredictProtocol
