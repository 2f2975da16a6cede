"""The predict path of the control plane: the data plane's pooled client against model servers that
answer in every legal (and some illegal) way, the documented answer for each case, and predicts
served from memory: no MLflow call, no file opened, per request."""

import asyncio
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from app.core.manifests import KIND_INFERENCE, inference_deployment, inference_service
from app.main import create_app
from app.runtime.base import Endpoint, Tls
from app.runtime.local import LocalRuntime
from app.settings import Settings
from models.spec import ServeSpec
from tests.dataplane_support import PROFILE, PROFILES, Plane, tightened
from tests.fake_kube.tls import make_tls_files
from tests.support import kill_workloads, wait_until

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

# -- a model server that answers exactly the bytes a test gives it ---------------------------------

Reply = Callable[[bytes], bytes | None]  # the request -> raw answer bytes, or None: close without answering


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return head + (await reader.readexactly(int(length.group(1))) if length else b"")


class RawUpstream:
    """Counts connections and requests; each answer comes from `reply`, then the connection stays
    open unless the answer says `Connection: close` or has no length (it ends with the connection)."""

    def __init__(self, reply: Reply, delay: float = 0.0):
        self.reply = reply
        self.delay = delay  # seconds each answer waits, so that calls overlap
        self.connections = 0
        self.busy = self.most_busy = 0  # requests being answered now, and at most at once
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while (request := await _read_request(reader)) is not None:
            self.requests.append(request)
            answer = self.reply(request)
            if answer is None:
                break
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
            await asyncio.sleep(self.delay)
            self.busy -= 1
            writer.write(answer)
            await writer.drain()
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            if b"connection: close" in head or not re.search(rb"content-length|transfer-encoding", head):
                break
        writer.close()

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def run_plane(reply: Reply, test: Callable[[Plane, str, RawUpstream], Awaitable[None]],
              plain_in_flight: int = 256, delay: float = 0.0) -> None:
    async def main() -> None:
        upstream = RawUpstream(reply, delay)
        url = await upstream.start()
        plane = Plane(plain_in_flight=plain_in_flight)
        try:
            plane.endpoints.put(Endpoint("t", url, True, PROFILE))
            await test(plane, url, upstream)
        finally:
            await plane.close()
            await upstream.stop()

    asyncio.run(main())


def answer(response: httpx.Response) -> tuple[int, bytes, str]:
    return response.status_code, response.content, response.headers.get("content-type", "")


def test_one_kept_alive_connection_carries_sequential_predicts() -> None:
    async def test(plane: Plane, _: str, upstream: RawUpstream) -> None:
        for _ in range(20):
            assert answer(await plane.predict("t", b'{"x": 1}')) == (200, b"{}", "application/json")
        assert upstream.connections == 1 and len(upstream.requests) == 20
        first = upstream.requests[0]
        assert first.startswith(b"POST /predict HTTP/1.1\r\n") and first.endswith(b'\r\n\r\n{"x": 1}')
        head = first.lower()  # header names are case-insensitive
        assert b"\r\ncontent-type: application/json\r\n" in head and b"\r\ncontent-length: 8\r\n" in head

    run_plane(lambda _: OK, test)


def test_a_connection_the_server_dropped_while_idle_is_replaced_transparently() -> None:
    answered: list[int] = []

    def reply(_: bytes) -> bytes | None:
        answered.append(1)
        # Every other request: the server closes the kept-alive connection instead of answering.
        return OK if len(answered) % 2 else None

    async def test(plane: Plane, _: str, upstream: RawUpstream) -> None:
        for _ in range(3):
            assert (await plane.predict("t", b"{}")).status_code == 200
        assert plane.endpoints.get("t").ready  # type: ignore[union-attr]
        assert upstream.connections >= 2

    run_plane(reply, test)


def test_an_answer_cut_after_its_head_is_asked_again_once() -> None:
    """A model server killed between writing an answer's head and its body: the predict is sent
    once more on a new connection (it has no side effects); cut twice, it is a 502."""
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{\"pre"
    answers = iter([cut, OK, cut, cut])

    async def test(plane: Plane, _: str, upstream: RawUpstream) -> None:
        assert (await plane.predict("t", b"{}")).status_code == 200
        assert upstream.connections == 2
        response = await plane.predict("t", b"{}")
        assert response.status_code == 502 and len(upstream.requests) == 4
        assert plane.endpoints.get("t").ready  # type: ignore[union-attr]

    run_plane(lambda _: next(answers), test)


def test_chunked_close_delimited_and_connection_close_answers() -> None:
    answers = iter([
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n{\"pre\r\n9\r\ndictions\"\r\nb\r\n: [1, 2.5]}\r\n0\r\n\r\n",
        b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/problem+json\r\nConnection: close\r\n"
        b"Content-Length: 13\r\n\r\n{\"error\": {}}",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        OK,
    ])

    async def test(plane: Plane, _: str, upstream: RawUpstream) -> None:
        assert answer(await plane.predict("t", b"{}")) == (200, b'{"predictions": [1, 2.5]}', "application/json")
        assert answer(await plane.predict("t", b"{}")) == (422, b'{"error": {}}', "application/problem+json")
        assert answer(await plane.predict("t", b"{}")) == (200, b"until the end", "text/plain")
        assert (await plane.predict("t", b"{}")).status_code == 200
        assert upstream.connections == 3  # the chunked one was reused; the other two ended theirs

    run_plane(lambda _: next(answers), test)


def test_a_garbled_answer_is_502_and_a_server_that_never_answers_is_503() -> None:
    async def garbled(plane: Plane, _: str, __: RawUpstream) -> None:
        response = await plane.predict("t", b"{}")
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
        assert plane.endpoints.get("t").ready  # type: ignore[union-attr]

    run_plane(lambda _: b"SMTP ready\r\n\r\n", garbled)

    async def silent(plane: Plane, _: str, upstream: RawUpstream) -> None:
        response = await plane.predict("t", b"{}")
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert upstream.connections == 2  # tried once more on a new connection
        assert not plane.endpoints.get("t").ready  # type: ignore[union-attr]

    run_plane(lambda _: None, silent)


def test_concurrent_predicts_share_at_most_pool_size_connections() -> None:
    async def test(plane: Plane, _: str, upstream: RawUpstream) -> None:
        answers = await asyncio.gather(*(plane.predict("t", b"{}") for _ in range(12)))
        assert [response.status_code for response in answers] == [200] * 12
        assert upstream.connections <= 3
        # The pool's size of calls at once, never more (each answer waits, so they would overlap).
        assert upstream.most_busy == 3

    run_plane(lambda _: OK, test, plain_in_flight=3, delay=0.05)


def test_https_with_the_endpoints_tls_settings_credentials_and_base_path(tmp_path: Path) -> None:
    """As through the Kubernetes API server's service proxy: a base path, a bearer token, its CA."""
    files = make_tls_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.server_cert, files.server_key)

    async def main() -> None:
        upstream = RawUpstream(lambda _: OK)
        url = await upstream.start(server_tls)
        plane = Plane()
        base = url + "/api/v1/namespaces/ml/services/http:infer-x:8080/proxy"
        plane.endpoints.put(Endpoint("t", base, True, PROFILE, headers={"Authorization": "Bearer s3cret"},
                                     tls=Tls(ca_pem=files.ca.read_bytes())))
        try:
            assert (await plane.predict("t", b"{}")).status_code == 200
            request = upstream.requests[0]
            assert request.startswith(b"POST /api/v1/namespaces/ml/services/http:infer-x:8080/proxy/predict HTTP/1.1")
            assert b"\r\nauthorization: bearer s3cret\r\n" in request.lower()
            # Without the endpoint's CA, the server's certificate is refused: not reachable.
            plane.endpoints.put(Endpoint("u", base, True, PROFILE))
            assert (await plane.predict("u", b"{}")).status_code == 503
        finally:
            await plane.close()
            await upstream.stop()

    asyncio.run(main())


# -- the fast path and the FastAPI route answer alike -----------------------------------------------


class ModelServer(BaseHTTPRequestHandler):
    """A threaded HTTP/1.1 model server: sums rows; "bad" is a 422, "crash" a 500, "slow" a timeout.
    It notes the X-Request-ID of each predict in `seen_request_ids`, when the server has that list."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        seen = getattr(self.server, "seen_request_ids", None)
        if seen is not None:
            seen.append(self.headers.get("X-Request-ID"))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"bad":
            self._answer(422, b'{"error": {"code": "invalid_input", "message": "3 features expected"}}')
        elif body == b"crash":
            self._answer(500, b"boom")
        elif body == b"slow":
            time.sleep(1.0)
            self._answer(200, b"{}")
        else:
            rows = json.loads(body)["data"]["features"]
            self._answer(200, json.dumps({"predictions": [sum(row) for row in rows]}).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def model_server(seen_request_ids: list[str | None] | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelServer)
    server.seen_request_ids = seen_request_ids  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def documented_plane(url: str, timeout: float = 0.3, **kwargs: Any) -> Plane:
    """A data plane whose profile times out after `timeout` and takes 100-byte bodies, with a Ready
    and a starting deployment on `url`; `kwargs` go to Plane."""
    plane = Plane(tightened(timeout=timeout, max_request_bytes=100), **kwargs)
    plane.endpoints.put(Endpoint("ready", url, True, PROFILE))
    plane.endpoints.put(Endpoint("starting", url, False, PROFILE, "loading the model"))
    return plane


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/inference/ready/predict", {"json": {"data": {"features": [[1, 2], [3, 4.5]]}}}),
    ("POST", "/api/v1/inference/ready/predict", {"content": b"bad"}),
    ("POST", "/api/v1/inference/ready/predict", {"content": b"crash"}),
    ("POST", "/api/v1/inference/ready/predict", {"content": b"slow"}),
    ("POST", "/api/v1/inference/ready/predict", {"content": b"x" * 101}),
    ("POST", "/api/v1/inference/ready/predict", {"content": iter([b"x" * 60, b"x" * 60])}),  # chunked, no length
    ("POST", "/api/v1/inference/starting/predict", {"json": {}}),
    ("POST", "/api/v1/inference/ghost/predict", {"json": {}}),
    ("GET", "/api/v1/inference/ready/predict", {}),
    ("POST", "/api/v1/inference/ready/predict/more", {"json": {}}),
]
CASE_STATUSES = [200, 422, 502, 504, 413, 413, 503, 404, 405, 404]


async def _chunks() -> AsyncIterator[bytes]:
    for chunk in (b"x" * 60, b"x" * 60):
        yield chunk


def case_kwargs(kwargs: dict[str, Any], asynchronous: bool = False) -> dict[str, Any]:
    if isinstance(kwargs.get("content"), Iterator):  # a fresh generator per request
        return {"content": _chunks() if asynchronous else iter([b"x" * 60, b"x" * 60])}
    return kwargs


def check_case_answers(answers: list[httpx.Response]) -> None:
    """The documented answers to CASES, in the API's error shape."""
    assert [response.status_code for response in answers] == CASE_STATUSES
    assert answers[0].json() == {"predictions": [3, 7.5]}
    assert answers[1].content == b'{"error": {"code": "invalid_input", "message": "3 features expected"}}'
    for response in answers[2:]:
        assert response.headers["content-type"] == "application/json" and "error" in response.json()
    codes = [response.json()["error"]["code"] for response in answers[2:]]
    assert codes == ["upstream_error", "upstream_timeout", "payload_too_large", "payload_too_large", "not_ready",
                     "not_found", "method_not_allowed", "not_found"]
    assert answers[6].headers["retry-after"] == "2"  # Retry-After on 503
    assert answers[8].headers["allow"] == "POST"


def test_the_data_plane_answers_the_documented_statuses() -> None:
    async def main(url: str) -> list[httpx.Response]:
        plane = documented_plane(url)
        try:
            async with plane.client() as client:
                return [await client.request(method, path, **case_kwargs(kwargs, True))
                        for method, path, kwargs in CASES]
        finally:
            await plane.close()

    with model_server() as url:
        check_case_answers(asyncio.run(main(url)))


# -- predicts come from memory ---------------------------------------------------------------------

STUB_MODEL_SERVER = """
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._answer(b'{"status": "ok"}')
    def do_POST(self):
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["data"]["features"]
        self._answer(json.dumps({"predictions": [sum(row) for row in rows]}).encode())
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["MLOPS_SERVE_PORT"])), Handler).serve_forever()
"""


class RecordingMlflow(BaseHTTPRequestHandler):
    """Stands in for MLflow: records every request and answers 503."""

    requests: list[str] = []

    def _record(self) -> None:
        RecordingMlflow.requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, *args: Any) -> None:
        pass


class Audit:
    """Counts files opened and sockets connected, process-wide, while `counting` (audit hooks
    cannot be removed, so the hook stays and does nothing outside a count)."""

    installed = False
    counting = False
    opened: list[str] = []
    connected: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if not cls.counting:
            return
        if event == "open":
            cls.opened.append(str(args[0]))
        elif event == "socket.connect":
            cls.connected.append(str(args[1]))

    @classmethod
    @contextmanager
    def count(cls) -> Iterator[None]:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.opened, cls.connected = [], []
        cls.counting = True
        try:
            yield
        finally:
            cls.counting = False


def _deploy_stub(data_dir: Path) -> None:
    """A deployment on the local runtime whose container runs a stub model server (no MLflow needed)."""
    profile = PROFILES[PROFILE]
    spec = ServeSpec(task_id="deploy-1", model_id="model-1", model_uri="runs:/0123/model", model_profile=PROFILE,
                     handler=profile.handler)
    request = {"taskId": "deploy-1", "modelId": "model-1", "mlflowRunId": "0123", "modelProfile": PROFILE,
               "useGpu": False, "replicas": 1}
    deployment = inference_deployment(spec, profile, False, 1, request)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["command"], container["args"] = ["python", "-c", STUB_MODEL_SERVER], []
    LocalRuntime(data_dir, {}).create(KIND_INFERENCE, "deploy-1", [deployment, inference_service(spec, profile,
                                                                                                 request)])


def test_predicts_call_neither_mlflow_nor_the_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    mlflow = ThreadingHTTPServer(("127.0.0.1", 0), RecordingMlflow)
    threading.Thread(target=mlflow.serve_forever, daemon=True).start()
    mlflow_url = f"http://127.0.0.1:{mlflow.server_address[1]}"
    try:
        _deploy_stub(data_dir)
        record = json.loads((data_dir / "tasks" / KIND_INFERENCE / "deploy-1" / "task.json").read_text())

        def answers() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", record["ports"]["1"])) == 0

        wait_until(answers, timeout=30, what="the stub model server")
        # The API starts on the data directory (as after a restart): the model server is ready at
        # once; with a long probe interval, no background work runs while the predicts are counted.
        settings = Settings(data_dir=data_dir, mlflow_uri=mlflow_url, local_probe_interval_seconds=3600)
        body = {"userId": "u", "data": {"features": [[1.0, 2.0], [3.0, 4.5]]}}
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.post("/api/v1/inference/deploy-1/predict", json=body).status_code == 200,
                       timeout=10, what="the deployment to be ready")
            time.sleep(0.5)  # the runtime's first reconcile pass is over
            RecordingMlflow.requests.clear()
            with Audit.count():
                for _ in range(100):
                    answer = client.post("/api/v1/inference/deploy-1/predict", json=body)
                    assert answer.status_code == 200 and answer.json() == {"predictions": [3.0, 7.5]}
            assert RecordingMlflow.requests == []
            assert Audit.opened == []
            assert Audit.connected == []  # the pooled connection to the model server was already open
    finally:
        kill_workloads(data_dir)
        mlflow.shutdown()
        mlflow.server_close()
