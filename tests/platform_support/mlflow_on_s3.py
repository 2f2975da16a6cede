"""An MLflow tracking server started with the arguments and environment of the Deployment in
kubernetes/base/mlflow.yaml (artifacts proxied to s3://mlflow/ in the S3 store), for tests.
What a cluster provides is replaced: SQLite for PostgreSQL, a free loopback port, one worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from app import embedded_mlflow
from tests.platform_support.manifest_containers import resolve_env, workload_container
from tests.platform_support.seaweedfs import S3_SECRET
from tests.support import free_port

# Flags the test sets itself (host, port, workers) or that a cluster provides (the database).
REPLACED = ("--host", "--port", "--workers", "--backend-store-uri")


class MlflowOnS3:
    def __init__(self, directory: Path, s3_endpoint: str, credentials: dict[str, str]) -> None:
        self.directory = directory
        self.s3_endpoint = s3_endpoint
        self.credentials = credentials
        self.container = workload_container("mlflow.yaml", "Deployment", "mlflow")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "mlflow.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        assert self.container["command"] == ["mlflow", "server"]
        kept = [arg for arg in self.container["args"] if arg.split("=", 1)[0] not in REPLACED]
        return [sys.executable, "-m", "mlflow", "server", *kept,
                "--host=127.0.0.1", f"--port={self.port}", "--workers=1",
                f"--backend-store-uri=sqlite:///{self.directory / 'mlflow.db'}"]

    def environment(self) -> dict[str, str]:
        # The database settings are replaced by --backend-store-uri; HOME stays this machine's.
        database = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MLFLOW_BACKEND_STORE_URI", "HOME"}
        env = resolve_env(self.container, {"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint},
                          {S3_SECRET: self.credentials}, leave_out=database)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        # The GenAI job runner is not part of this platform (as in app/embedded_mlflow.py).
        return {**inherited, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def start(self, timeout: float = 120) -> MlflowOnS3:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.directory, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"MLflow exited with {self.process.returncode}: {self.log_tail()}")
            if embedded_mlflow.is_mlflow(self.uri):
                return self
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"MLflow did not answer within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            embedded_mlflow.stop(self.process)
            self.process = None
