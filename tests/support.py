"""Helpers the tests share: free ports, datasets they generate, a running API process."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from app.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def regression_csv(path: Path, rows: int = 300, features: int = 8, seed: int = 0, target: str = "price") -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = x @ np.arange(1, features + 1) + 3.0 + rng.normal(scale=0.05, size=rows)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame[target] = y
    frame.to_csv(path, index=False)
    return path


def classification_csv(path: Path, rows: int = 300, seed: int = 1) -> Path:
    """Three string classes, separable on the first two features; the label is not the last column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    labels = np.where(x[:, 0] > 0.5, "setosa", np.where(x[:, 1] > 0, "versicolor", "virginica"))
    frame = pd.DataFrame({"species": labels, **{f"m{i}": x[:, i] for i in range(4)}})
    frame.to_csv(path, index=False)
    return path


def plan_deployment(service: Any, request: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A DeploymentService's plan for a run or reference it need not look up (no MLflow)."""
    return asyncio.run(service.plan(request, check_runs=False))


def model_server_dir(data_dir: Path, task_id: str) -> Path:
    """The local runtime's directory of a deployment's serving model server (status.json, output.log)."""
    task_dir = data_dir / "tasks" / "inference" / task_id
    serving = task_dir / "serving.json"
    if serving.exists():
        revision = json.loads(serving.read_text())["revision"]
    else:
        revision = json.loads((task_dir / "task.json").read_text()).get("revision", 1)
    return task_dir / "pods" / str(revision)


def model_server_port(data_dir: Path, task_id: str, revision: int = 1) -> int:
    record = json.loads((data_dir / "tasks" / "inference" / task_id / "task.json").read_text())
    return record["ports"][str(revision)]


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class ApiProcess:
    """`python -m app` as a user runs it, on its own port and data directory."""

    def __init__(self, data_dir: Path, mlflow_uri: str, extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "MLOPS_DATA_DIR": str(data_dir),
            "MLOPS_PORT": str(self.port),
            "MLOPS_MLFLOW_URI": mlflow_uri,
            "MLOPS_LOCAL_PROBE_INTERVAL_SECONDS": "0.2",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "api.log"

    def start(self) -> "ApiProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(self._ready, timeout=60, what=f"the API at {self.url} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"API exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # as Ctrl-C on `make run`
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def kill_workloads(data_dir: Path) -> None:
    """Stop every supervisor (and so every workload) a test left in a data directory."""
    # A Job's supervisor is in its task's directory; a Deployment's, one per revision, in pods/<N>/.
    for info in [*data_dir.glob("tasks/*/*/supervisor.json"), *data_dir.glob("tasks/*/*/pods/*/supervisor.json")]:
        with contextlib.suppress(Exception):
            pid = int(json.loads(info.read_text())["pid"])
            os.killpg(pid, signal.SIGKILL)
