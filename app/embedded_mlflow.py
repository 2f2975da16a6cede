"""The embedded MLflow tracking server of `make run`: SQLite backend, artifacts on local disk.

Artifacts are served through the tracking server (mlflow-artifacts:/), so workloads need only
the tracking URI, as they would on a cluster.
"""

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def is_mlflow(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def unavailable_reason() -> str | None:
    """Why `mlflow server` cannot run in this environment, or None. Its server (Flask, SQLAlchemy...)
    comes with the full `mlflow` distribution only, not with mlflow-skinny (the API image's)."""
    try:
        importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return ("the embedded MLflow server needs the full `mlflow` package, and only mlflow-skinny (no server) "
                "is installed: set MLOPS_MLFLOW_URI to a running MLflow server")
    return None


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


def start(data_dir: Path, port: int, timeout: float = 120.0) -> tuple[str, subprocess.Popen[bytes] | None]:
    """Start the server, or reuse one already answering on the port; return its URI and process."""
    uri = f"http://127.0.0.1:{port}"
    if is_mlflow(uri):
        print(f"MLflow: reusing the server already running at {uri}", flush=True)
        return uri, None
    if (reason := unavailable_reason()) is not None:
        raise RuntimeError(reason)
    if port_taken(port):
        raise RuntimeError(f"port {port} is taken by a program that is not MLflow: set MLOPS_MLFLOW_PORT to a free "
                           "port, or MLOPS_MLFLOW_URI to a running MLflow server")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "mlflow.log", "ab")  # noqa: SIM115 - lives as long as the server
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination", str((data_dir / "mlartifacts").resolve()),
        "--serve-artifacts",
    ]
    # MLflow's background job runner (GenAI evaluation jobs) is not used here: keep it off.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Its own process group, so that stop() takes every process the server forks.
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # Its own last words (an import error, a port taken meanwhile, a database it cannot open).
            log_path = data_dir / "mlflow.log"
            raise RuntimeError(
                f"the MLflow server exited with code {process.returncode}: {last_line(log_path)} (see {log_path})"
            )
        if is_mlflow(uri):
            return uri, process
        time.sleep(0.25)
    stop(process)
    raise RuntimeError(f"the MLflow server did not answer within {timeout:.0f} s; see {data_dir / 'mlflow.log'}")


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
