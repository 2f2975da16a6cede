"""Our control plane in front of our model server, as a user runs it: `python -m app` on the local
runtime with MLOPS_WORKERS API workers, a deployment created through the API, predicts through
`POST /api/v1/inference/{task_id}/predict`; and the same model server called directly."""

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from benchmarks.models import BenchModel
from benchmarks.processes import Server, free_port, request

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TASK_ID = "bench-predict"
# Successful predicts in a row through the API before measuring: with several API workers, each
# answers some of them.
READY_IN_A_ROW = 20
SUPERVISOR = "app.runtime.local_supervisor"


class ControlPlane:
    # What the harness sets; any other MLOPS_* variable of its environment reaches the API as is.
    OWN_VARIABLES = ("MLOPS_DATA_DIR", "MLOPS_PORT", "MLOPS_MLFLOW_URI", "MLOPS_WORKERS")

    def __init__(self, work: Path, tracking_uri: str, workers: int, extra_env: dict[str, str] | None = None):
        self.data_dir = work / "control-plane"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"MLOPS_DATA_DIR": str(self.data_dir), "MLOPS_PORT": str(self.port), "MLOPS_MLFLOW_URI": tracking_uri,
               "MLOPS_WORKERS": str(workers), **(extra_env or {})}
        self.server = Server(f"control plane ({workers} worker{'s' if workers > 1 else ''})",
                             [sys.executable, "-m", "app"], self.url + "/readyz", env, PROJECT_ROOT,
                             work / f"control-plane-{workers}w.log")

    @property
    def predict_url(self) -> str:
        return f"{self.url}/api/v1/inference/{TASK_ID}/predict"

    def start(self, cpus: str | None = None) -> "ControlPlane":
        self.server.start(cpus)
        return self

    def deploy(self, model: BenchModel, body: bytes, timeout: float = 120.0) -> None:
        """Deploy the model and wait until predicts go through: Ready, and then answered by every
        API worker (each keeps its own endpoint cache, so each must have seen the server ready)."""
        deploy = orjson.dumps({"taskId": TASK_ID, "modelId": f"bench-{model.key}", "mlflowRunId": model.run_id,
                               "modelProfile": model.profile})
        status, answer = request(self.url + "/api/v1/inference/deployments", "POST", deploy)
        if status not in (200, 201):
            raise RuntimeError(f"deploy answered {status}: {answer[:500]!r}")
        deadline = time.monotonic() + timeout
        in_a_row = 0
        while in_a_row < READY_IN_A_ROW:
            if time.monotonic() > deadline:
                raise RuntimeError(f"predicts through the API did not succeed within {timeout:.0f} s: {answer[:300]!r}")
            status, answer = request(f"{self.url}/api/v1/inference/deployments/{TASK_ID}")
            if status == 200 and json.loads(answer).get("status") == "Failed":
                raise RuntimeError(f"deployment failed: {json.loads(answer).get('message')}")
            status, answer = request(self.predict_url, "POST", body)
            in_a_row = in_a_row + 1 if status == 200 else 0
            time.sleep(0.05 if status == 200 else 0.2)

    def direct_url(self) -> str:
        """The model server the deployment runs, addressed without the API: the loopback port the
        local runtime gave its first revision's model server (recorded in the task's directory)."""
        record = json.loads((self.data_dir / "tasks" / "inference" / TASK_ID / "task.json").read_text())
        return f"http://127.0.0.1:{record['ports']['1']}/predict"

    def api_rss_mib(self) -> float:
        # The model server runs under the API's supervisor: counted on its own, not here.
        return self.server.rss_mib(skip=lambda command: SUPERVISOR in command)

    def api_cpu_seconds(self) -> float:
        return self.server.cpu_seconds(skip=lambda command: SUPERVISOR in command)

    def undeploy(self) -> None:
        """Remove the deployment, which stops its model server."""
        status, answer = request(f"{self.url}/api/v1/inference/deployments/{TASK_ID}", "DELETE", timeout=60)
        if status not in (200, 404):
            raise RuntimeError(f"undeploy answered {status}: {answer[:500]!r}")

    def stop(self) -> None:
        self.server.stop()
        stop_workloads(self.data_dir)


def stop_workloads(data_dir: Path) -> None:
    """Stop the model servers a control plane left running (they outlive the API, as pods would):
    after a failed run, or before a new one on the same data directory."""
    # A Deployment's supervisors are one per revision, in pods/<N>/.
    for info in [*data_dir.glob("tasks/*/*/supervisor.json"), *data_dir.glob("tasks/*/*/pods/*/supervisor.json")]:
        with contextlib.suppress(ValueError, KeyError, OSError):
            pid = int(json.loads(info.read_text())["pid"])
            # Only a supervisor of this very directory: the pid may have been reused since.
            if str(info.parent).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
