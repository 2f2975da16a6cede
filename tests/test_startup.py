"""Starting the control plane without what its runtime needs: `python -m app` stops at once with one
line naming every setting to give (never a worker crash loop), and /readyz answers 503 while the
Kubernetes API cannot be reached, 200 once it can."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import embedded_mlflow
from app.main import create_app
from app.runtime.kubernetes import KubernetesRuntime
from app.runtime.kubernetes.api import RetryPolicy
from app.settings import PROJECT_ROOT, Settings
from app.startup_checks import startup_problem
from tests.fake_kube import FakeKube
from tests.support import free_port, wait_until


def run_app(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app` outside any pod, with no kubeconfig and no MLOPS_* setting but `env`."""
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("MLOPS_", "KUBERNETES_", "KUBECONFIG"))}
    clean.update(HOME=str(tmp_path), MLOPS_PORT=str(free_port()), **env)
    return subprocess.run([sys.executable, "-m", "app"], cwd=PROJECT_ROOT, env=clean, capture_output=True,
                          text=True, timeout=120)


def test_the_kubernetes_runtime_without_its_settings_stops_with_one_line_naming_them(tmp_path: Path) -> None:
    done = run_app(tmp_path, MLOPS_RUNTIME="kubernetes")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the kubernetes runtime cannot start: "), done.stderr
    for setting in ("MLOPS_MLFLOW_URI", "MLOPS_API_TOKENS", "MLOPS_AUTH_DISABLED", "MLOPS_KUBECONFIG"):
        assert setting in lines[0]
    assert "Uvicorn running" not in done.stdout + done.stderr


def test_the_kubernetes_runtime_names_only_what_is_missing(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    settings = Settings(runtime="kubernetes", kubeconfig=kubeconfig, auth_disabled=True)
    problem = startup_problem(settings)
    assert problem is not None and "MLOPS_MLFLOW_URI" in problem
    assert "MLOPS_API_TOKENS" not in problem and "MLOPS_KUBECONFIG" not in problem
    # A cluster that does not answer is no reason to stop: /readyz says so instead.
    assert startup_problem(settings.model_copy(update={"mlflow_uri": "http://mlflow:5000"})) is None


def test_an_unwritable_data_directory_is_named_with_its_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = run_app(tmp_path, MLOPS_DATA_DIR=str(blocker / "data"), MLOPS_MLFLOW_URI="http://127.0.0.1:9")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLOPS_DATA_DIR" in lines[0] and str(blocker / "data") in lines[0], done.stderr
    assert blocker.read_text() == "not a directory"  # nothing was made


def test_a_read_only_data_directory_is_named_and_nothing_is_created(tmp_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    problem = startup_problem(Settings(data_dir=read_only / "data", mlflow_uri="http://127.0.0.1:9"))
    if os.access(read_only, os.W_OK):  # root may write anywhere: nothing to refuse
        assert problem is None
    else:
        assert problem is not None and "is not writable" in problem and "MLOPS_DATA_DIR" in problem
    assert not (read_only / "data").exists()


def test_without_the_mlflow_server_package_the_embedded_default_asks_for_a_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow-skinny (the API image's) has no server: say so, never blame the port."""
    real_version = embedded_mlflow.importlib.metadata.version

    def version(name: str) -> str:
        if name == "mlflow":
            raise embedded_mlflow.importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(embedded_mlflow.importlib.metadata, "version", version)
    problem = startup_problem(Settings(data_dir=tmp_path / "data"))
    assert problem is not None and "mlflow-skinny" in problem and "MLOPS_MLFLOW_URI" in problem
    assert "port" not in problem
    with pytest.raises(RuntimeError, match="MLOPS_MLFLOW_URI"):
        embedded_mlflow.start(tmp_path / "data", free_port())
    assert startup_problem(Settings(data_dir=tmp_path / "data", mlflow_uri="http://127.0.0.1:9")) is None


def test_a_port_taken_by_another_program_is_named_before_mlflow_starts(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is taken.*MLOPS_MLFLOW_PORT"):
            embedded_mlflow.start(tmp_path, port, timeout=5)
    assert not (tmp_path / "mlflow.log").exists()


def kubernetes_client(api_client: object, namespace: str, retry_delay: float) -> TestClient:
    runtime = KubernetesRuntime(api_client, namespace, retry=RetryPolicy(attempts=1),  # type: ignore[arg-type]
                                watch_retry_delay_seconds=retry_delay, sync_timeout_seconds=0.5)
    settings = Settings(runtime="kubernetes", mlflow_uri="http://127.0.0.1:9", namespace=namespace,
                        auth_disabled=True)
    return TestClient(create_app(settings, runtime=runtime))


def test_readyz_is_503_while_the_kubernetes_api_cannot_be_reached() -> None:
    with FakeKube() as fake:
        api_client = fake.api_client()
        api_client.configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        with kubernetes_client(api_client, fake.namespace, retry_delay=0.05) as client:
            answer = client.get("/readyz")
            assert answer.status_code == 503 and answer.headers["Retry-After"]
            error = answer.json()["error"]
            assert error["code"] == "dependency_unavailable" and "cannot be reached" in error["message"]
            assert client.get("/healthz").status_code == 200  # alive: restarting it would not help


def test_readyz_follows_the_kubernetes_api_going_away_and_coming_back() -> None:
    with FakeKube() as fake, kubernetes_client(fake.api_client(), fake.namespace, retry_delay=0.3) as client:

        def status() -> int:
            return client.get("/readyz").status_code

        wait_until(lambda: status() == 200, 30, 0.05, "readyz 200 with the cluster up")
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok" and ready["runtime"] == "kubernetes"
        # The API server fails the next lists (0.3 + 0.6 + 1.2 s of retry pauses), then recovers.
        fake.fail_next("list", "deployments", 500, times=3, message="etcdserver: request timed out")
        fake.drop_watches()
        message = wait_until(lambda: client.get("/readyz").json().get("error", {}).get("message"), 30, 0.05,
                             "readyz 503 while lists fail")
        assert "etcdserver: request timed out" in message and "deployments" in message
        wait_until(lambda: status() == 200, 30, 0.05, "readyz 200 once the cluster answers again")


def test_readyz_on_the_local_runtime_is_200(tmp_path: Path, mlflow_uri: str) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path, mlflow_uri=mlflow_uri))) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 200 and answer.json()["runtime"] == "local"


def test_readyz_over_http_from_a_real_process(tmp_path: Path, mlflow_uri: str) -> None:
    """The probe a kubelet makes, against `python -m app` with the Kubernetes API down."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u, namespace: ns}}]\n"
    )
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLOPS_", "KUBERNETES_"))}
    env.update(MLOPS_RUNTIME="kubernetes", MLOPS_KUBECONFIG=str(kubeconfig), MLOPS_AUTH_DISABLED="true",
               MLOPS_MLFLOW_URI=mlflow_uri, MLOPS_PORT=str(port), MLOPS_WORKERS="1")
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=PROJECT_ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        def readyz() -> int | None:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx.HTTPError:
                return None

        assert wait_until(readyz, 60, 0.2, "the API to answer /readyz") == 503
        assert process.poll() is None  # it stays up, unready, instead of restarting workers
    finally:
        process.terminate()
        process.wait(timeout=30)
