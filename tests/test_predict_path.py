"""The predict path of the control plane: the pooled HTTP/1.1 client against model servers that
answer in every legal (and some illegal) way, the ASGI fast path answering exactly as the FastAPI
route does, and predicts served from memory: no MLflow call, no file opened, per request."""

import asyncio
import datetime
import ipaddress
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from starlette.testclient import TestClient

from app.core.manifests import KIND_INFERENCE, inference_deployment, inference_service
from app.core.openai_proxy import OpenAIProxy
from app.core.proxy import PredictProxy
from app.errors import NotReady, UpstreamError, install_error_handlers
from app.main import create_app
from app.profiles import load_profiles
from app.routers import inference
from app.runtime.base import Endpoint, EndpointCache
from app.runtime.local import LocalRuntime
from app.settings import PROJECT_ROOT, Settings
from models.spec import ServeSpec
from tests.support import kill_workloads, wait_until

PROFILE = "tabular_regression"
PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
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

    def __init__(self, reply: Reply):
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while (request := await _read_request(reader)) is not None:
            self.requests.append(request)
            answer = self.reply(request)
            if answer is None:
                break
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


def run_proxy(reply: Reply, test: Callable[[PredictProxy, EndpointCache, str, RawUpstream], Awaitable[None]],
              pool_size: int = 256) -> None:
    async def main() -> None:
        upstream = RawUpstream(reply)
        url = await upstream.start()
        cache = EndpointCache()
        proxy = PredictProxy(cache, PROFILES, pool_size=pool_size)
        await proxy.start()
        try:
            cache.put(Endpoint("t", url, True, PROFILE))
            await test(proxy, cache, url, upstream)
        finally:
            await proxy.close()
            await upstream.stop()

    asyncio.run(main())


def test_one_kept_alive_connection_carries_sequential_predicts() -> None:
    async def test(proxy: PredictProxy, _: EndpointCache, __: str, upstream: RawUpstream) -> None:
        for _ in range(20):
            assert await proxy.forward("t", "/predict", b'{"x": 1}', "application/json") == (200, b"{}",
                                                                                          "application/json")
        assert upstream.connections == 1 and len(upstream.requests) == 20
        first = upstream.requests[0]
        assert first.startswith(b"POST /predict HTTP/1.1\r\n") and first.endswith(b'\r\n\r\n{"x": 1}')
        assert b"Content-Type: application/json\r\n" in first and b"Content-Length: 8\r\n" in first

    run_proxy(lambda _: OK, test)


def test_a_connection_the_server_dropped_while_idle_is_replaced_transparently() -> None:
    answered: list[int] = []

    def reply(_: bytes) -> bytes | None:
        answered.append(1)
        # Every other request: the server closes the kept-alive connection instead of answering.
        return OK if len(answered) % 2 else None

    async def test(proxy: PredictProxy, cache: EndpointCache, _: str, upstream: RawUpstream) -> None:
        for _ in range(3):
            assert (await proxy.forward("t", "/predict", b"{}", "application/json"))[0] == 200
        assert cache.get("t").ready  # type: ignore[union-attr]
        assert upstream.connections >= 2

    run_proxy(reply, test)


def test_chunked_close_delimited_and_connection_close_answers() -> None:
    answers = iter([
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n{\"pre\r\n9\r\ndictions\"\r\nb\r\n: [1, 2.5]}\r\n0\r\n\r\n",
        b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/problem+json\r\nConnection: close\r\n"
        b"Content-Length: 13\r\n\r\n{\"error\": {}}",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        OK,
    ])

    async def test(proxy: PredictProxy, _: EndpointCache, __: str, upstream: RawUpstream) -> None:
        assert await proxy.forward("t", "/predict", b"{}", "application/json") == (
            200, b'{"predictions": [1, 2.5]}', "application/json")
        assert await proxy.forward("t", "/predict", b"{}", "application/json") == (
            422, b'{"error": {}}', "application/problem+json")
        assert await proxy.forward("t", "/predict", b"{}", "application/json") == (200, b"until the end", "text/plain")
        assert (await proxy.forward("t", "/predict", b"{}", "application/json"))[0] == 200
        assert upstream.connections == 3  # the chunked one was reused; the other two ended theirs

    run_proxy(lambda _: next(answers), test)


def test_a_garbled_answer_is_502_and_a_server_that_never_answers_is_503() -> None:
    async def garbled(proxy: PredictProxy, cache: EndpointCache, _: str, __: RawUpstream) -> None:
        with pytest.raises(UpstreamError) as error:
            await proxy.forward("t", "/predict", b"{}", "application/json")
        assert error.value.status_code == 502
        assert cache.get("t").ready  # type: ignore[union-attr]

    run_proxy(lambda _: b"SMTP ready\r\n\r\n", garbled)

    async def silent(proxy: PredictProxy, cache: EndpointCache, _: str, upstream: RawUpstream) -> None:
        with pytest.raises(NotReady):
            await proxy.forward("t", "/predict", b"{}", "application/json")
        assert upstream.connections == 2  # tried once more on a new connection
        assert not cache.get("t").ready  # type: ignore[union-attr]

    run_proxy(lambda _: None, silent)


def test_concurrent_predicts_share_at_most_pool_size_connections() -> None:
    async def slow_reply(proxy: PredictProxy, _: EndpointCache, __: str, upstream: RawUpstream) -> None:
        answers = await asyncio.gather(*(proxy.forward("t", "/predict", b"{}", "application/json") for _ in range(12)))
        assert [status for status, _, _ in answers] == [200] * 12
        assert upstream.connections <= 3

    run_proxy(lambda _: OK, slow_reply, pool_size=3)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_with_the_endpoints_tls_settings_credentials_and_base_path(tmp_path: Path) -> None:
    """As through the Kubernetes API server's service proxy: a base path, a bearer token, its CA."""
    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    client_tls = ssl.create_default_context(cafile=str(cert_file))

    async def main() -> None:
        upstream = RawUpstream(lambda _: OK)
        url = await upstream.start(server_tls)
        cache = EndpointCache()
        proxy = PredictProxy(cache, PROFILES)
        await proxy.start()
        base = url + "/api/v1/namespaces/ml/services/http:infer-x:8080/proxy"
        cache.put(Endpoint("t", base, True, PROFILE, headers={"Authorization": "Bearer s3cret"},
                           ssl_context=client_tls))
        try:
            assert (await proxy.forward("t", "/predict", b"{}", "application/json"))[0] == 200
            request = upstream.requests[0]
            assert request.startswith(b"POST /api/v1/namespaces/ml/services/http:infer-x:8080/proxy/predict HTTP/1.1")
            assert b"\r\nAuthorization: Bearer s3cret\r\n" in request
            # Without the endpoint's CA, the server's certificate is refused: not reachable.
            cache.put(Endpoint("u", base, True, PROFILE))
            with pytest.raises(NotReady):
                await proxy.forward("u", "/predict", b"{}", "application/json")
        finally:
            await proxy.close()
            await upstream.stop()

    asyncio.run(main())


# -- the fast path and the FastAPI route answer alike -----------------------------------------------


class ModelServer(BaseHTTPRequestHandler):
    """A threaded HTTP/1.1 model server: sums rows; "bad" is a 422, "crash" a 500, "slow" a timeout."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
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
def model_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def predict_app(url: str, fast_path: bool) -> FastAPI:
    """The inference router with the app's error handlers, with or without PredictFastPath."""
    profiles = dict(PROFILES)
    quick = profiles[PROFILE].inference.model_copy(update={"predict_timeout_seconds": 0.3, "max_request_bytes": 100})
    profiles[PROFILE] = profiles[PROFILE].model_copy(update={"inference": quick})
    cache = EndpointCache()
    cache.put(Endpoint("ready", url, True, PROFILE))
    cache.put(Endpoint("starting", url, False, PROFILE, "loading the model"))
    proxy = PredictProxy(cache, profiles)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        await proxy.start()
        yield
        await proxy.close()

    app = FastAPI(lifespan=lifespan)
    app.state.proxy = proxy
    app.state.openai_proxy = OpenAIProxy(cache, profiles)  # consulted only for language models
    install_error_handlers(app)
    if fast_path:
        app.add_middleware(inference.PredictFastPath)
    app.include_router(inference.router)
    return app


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


def test_the_fast_path_answers_exactly_as_the_fastapi_route() -> None:
    answers: dict[bool, list[tuple[int, str, bytes, str | None]]] = {}
    with model_server() as url:
        for fast_path in (False, True):
            with TestClient(predict_app(url, fast_path)) as client:
                answers[fast_path] = []
                for method, path, kwargs in CASES:
                    if isinstance(kwargs.get("content"), Iterator):
                        kwargs = {"content": iter([b"x" * 60, b"x" * 60])}  # a fresh generator per app
                    response = client.request(method, path, **kwargs)
                    answers[fast_path].append((response.status_code, response.headers.get("content-type", ""),
                                               response.content, response.headers.get("retry-after")))
    assert answers[True] == answers[False]
    statuses = [status for status, _, _, _ in answers[True]]
    assert statuses == [200, 422, 502, 504, 413, 413, 503, 404, 405, 404]
    assert json.loads(answers[True][0][2]) == {"predictions": [3, 7.5]}
    assert answers[True][1][2] == b'{"error": {"code": "invalid_input", "message": "3 features expected"}}'
    assert answers[True][6][3] is not None  # Retry-After on 503
    assert json.loads(answers[True][7][2])["error"]["code"] == "not_found"


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
    request = {"taskId": "deploy-1"}
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
                return sock.connect_ex(("127.0.0.1", record["port"])) == 0

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
