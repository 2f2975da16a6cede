"""The data plane under a real uvicorn server, as `python -m app` serves it: the documented answers,
pipelining, Connection: close, Expect: 100-continue, auth, body limits, disconnects, shutdown,
request ids, and one access line per call."""

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from app.access_log import AccessLog, AccessLogMiddleware
from app.core.auth import Authenticator, parse_token_entries
from app.metrics import RequestMetrics
from app.middleware import AuthMiddleware, BodyLimitMiddleware
from app.routers import health
from models.logs import formatter
from tests.dataplane_support import OPEN, Plane
from tests.test_predict_path import CASES, case_kwargs, check_case_answers, documented_plane, model_server

ADMIN, PREDICTOR = "a" * 20, "p" * 20


def api(url: str, authenticator: Authenticator = OPEN, max_predict_bytes: int = 1 << 20,
        access_log: AccessLog | None = None, timeout: float = 0.3) -> Plane:
    """documented_plane in front of the middleware and the health routes that create_app has."""
    access_log = access_log or AccessLog(False)
    plane = documented_plane(url, timeout, authenticator=authenticator, max_predict_bytes=max_predict_bytes,
                             access_log=access_log)
    plane.management.include_router(health.router)
    plane.management.add_middleware(BodyLimitMiddleware, max_bytes=1 << 20)
    plane.management.add_middleware(AuthMiddleware, authenticator=authenticator)
    plane.management.add_middleware(AccessLogMiddleware, access_log=access_log, metrics=RequestMetrics())
    return plane


@contextmanager
def serve(plane: Plane, **config: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """The plane's app under uvicorn (httptools, as `python -m app`), in a thread, on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(plane.app, http="httptools", log_level="warning", access_log=False,
                                           lifespan="off", **config))
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


def test_answers_under_uvicorn_are_the_documented_ones() -> None:
    with model_server() as upstream, serve(api(upstream)) as (url, _), httpx.Client(base_url=url) as client:
        check_case_answers([client.request(method, path, **case_kwargs(kwargs)) for method, path, kwargs in CASES])
        headers = client.post("/api/v1/inference/ready/predict", json={"data": {"features": [[1]]}}).headers
    assert headers["server"] == "uvicorn" and "date" in headers and headers["content-length"] == "20"
    assert len(headers["x-request-id"]) == 32


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


def test_pipelined_requests_are_answered_in_order() -> None:
    with model_server() as upstream, serve(api(upstream)) as (url, _):
        pipelined = (predict_request(b"slow") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     + predict_request() + predict_request(b'{"data": {"features": [[5]]}}'))
        answers, closed = raw_exchange(url, pipelined, 4)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 504 Gateway Timeout", b"HTTP/1.1 200 OK",
                                                         b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b'"upstream_timeout"' in answers[0] and b'"status"' in answers[1]
    assert answers[2].endswith(b'{"predictions": [3]}') and answers[3].endswith(b'{"predictions": [5]}')
    assert not closed


def test_connection_close_http_1_0_and_expect_100_continue() -> None:
    with model_server() as upstream, serve(api(upstream)) as (url, _):
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


def test_tokens_are_checked_and_refusals_come_from_the_api() -> None:
    authenticator = Authenticator(parse_token_entries(f"admin:{ADMIN},predict:{PREDICTOR}", "test"), enabled=True)
    with model_server() as upstream, serve(api(upstream, authenticator)) as (url, _), \
            httpx.Client(base_url=url) as client:
        path, body = "/api/v1/inference/ready/predict", {"data": {"features": [[1]]}}
        refused = client.post(path, json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="mlops"'
        assert refused.json()["error"]["code"] == "unauthorized"
        assert client.post(path, json=body, headers={"Authorization": "Bearer wrong-token-000000"}
                           ).status_code == 401
        for token in (PREDICTOR, ADMIN):
            response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200 and response.json() == {"predictions": [1]}
        # The predict role stops at the data plane: the management routes need admin.
        forbidden = client.get("/api/v1/inference/deployments", headers={"Authorization": f"Bearer {PREDICTOR}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"


def test_the_body_limit_of_the_api_applies_too() -> None:
    with model_server() as upstream, serve(api(upstream, max_predict_bytes=30)) as (url, _), \
            httpx.Client(base_url=url) as client:
        response = client.post("/api/v1/inference/ready/predict", content=b'{"data": {"features": [[1, 2]]}}')
        assert response.status_code == 413 and "30 bytes" in response.json()["error"]["message"]


def test_a_client_that_leaves_mid_predict_harms_nothing() -> None:
    with model_server() as upstream, serve(api(upstream)) as (url, _):
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
        plane = api(dead)
        with serve(plane) as (url, _), httpx.Client(base_url=url) as client:
            response = client.post("/api/v1/inference/ready/predict", json={})
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "not_ready"
            assert not plane.endpoints.get("ready").ready  # type: ignore[union-attr]


def test_shutdown_waits_for_a_predict_in_flight() -> None:
    with model_server() as upstream:
        plane = api(upstream, timeout=5.0)  # "slow" takes 1 s: not a timeout
        with serve(plane, timeout_graceful_shutdown=10) as (url, server):
            result: list[bytes] = []
            thread = threading.Thread(target=lambda: result.extend(raw_exchange(url, predict_request(b"slow"), 1)[0]))
            thread.start()
            time.sleep(0.3)
            server.should_exit = True
            thread.join(10)
    assert result and result[0].startswith(b"HTTP/1.1 200 OK") and b"\r\nconnection: close\r\n" in result[0]


def test_each_call_gets_a_request_id_and_one_json_access_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.dataplane.access")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    seen: list[str | None] = []

    with model_server(seen_request_ids=seen) as upstream, \
            serve(api(upstream, access_log=AccessLog(True, logger))) as (url, _), httpx.Client(base_url=url) as client:
        mine = client.post("/api/v1/inference/ready/predict", json={"data": {"features": [[1]]}},
                           headers={"X-Request-ID": "batch-7.row:42", "Authorization": "Bearer not-logged-0000"})
        assert mine.headers["x-request-id"] == "batch-7.row:42"
        unusable = client.post("/api/v1/inference/ghost/predict", json={}, headers={"X-Request-ID": "a b"})
        assert unusable.status_code == 404 and len(unusable.headers["x-request-id"]) == 32
        health_check = client.get("/healthz")
        assert len(health_check.headers["x-request-id"]) == 32
    assert seen == ["batch-7.row:42"]  # the model server got the caller's id
    assert "not-logged" not in stream.getvalue() and "features" not in stream.getvalue()  # no token, no body
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert {"time", "level", "logger", "message"} <= first.keys() and first["level"] == "INFO"
    assert datetime.fromisoformat(first["time"]).utcoffset() == timedelta(0)  # RFC 3339, UTC
    assert (first["method"], first["path"], first["status"]) == ("POST", "/api/v1/inference/ready/predict", 200)
    assert first["requestId"] == "batch-7.row:42" and first["taskId"] == "ready" and first["durationMs"] > 0
    assert (lines[1]["status"], lines[1]["taskId"], lines[1]["requestId"]) == (404, "ghost",
                                                                               unusable.headers["x-request-id"])
    assert (lines[2]["path"], lines[2]["status"]) == ("/healthz", 200) and "taskId" not in lines[2]


def test_python_m_app_serves_with_uvicorns_own_protocol_and_our_access_log(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Any) -> None:
    import app.__main__ as launcher

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(launcher.uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("MLOPS_MLFLOW_URI", "http://127.0.0.1:9")  # no embedded MLflow
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path))
    assert launcher.main() == 0
    assert "http" not in calls[0] and calls[0]["access_log"] is False
    assert calls[0]["log_config"]["loggers"]["mlops.access"]["level"] == "INFO"
    assert calls[0]["log_config"]["formatters"]["default"] == {"()": "models.logs.formatter", "kind": "json"}
