"""Runs one local workload the way the kubelet runs a container, and outlives the API.

`python -m app.runtime.local_supervisor TASK_DIR` reads TASK_DIR/process.json (command, env,
cwd, restartPolicy), runs the command with its output appended to TASK_DIR/output.log, and keeps
TASK_DIR/status.json current. restartPolicy "Never" (a Job) runs it once and records the exit
code; "Always" (a Deployment) restarts it after a crash with exponential back-off. SIGTERM stops
the workload (SIGTERM, then SIGKILL after a grace period) and the supervisor.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GRACE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as file:
        file.write(json.dumps(data))
    os.replace(tmp, path)


class Supervisor:
    def __init__(self, task_dir: Path):
        self.task_dir = task_dir
        self.process_spec = json.loads((task_dir / "process.json").read_text())
        self.status_path = task_dir / "status.json"
        self.status: dict[str, Any] = {"supervisorPid": os.getpid(), "phase": "Starting", "restarts": 0}
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def save(self, **changes: Any) -> None:
        self.status.update(changes)
        write_json_atomic(self.status_path, self.status)

    def on_term(self, *_: Any) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.terminate()

    def run_once(self) -> int:
        with open(self.task_dir / "output.log", "ab", buffering=0) as log:
            self.child = subprocess.Popen(
                self.process_spec["command"],
                cwd=self.process_spec["cwd"],
                env=self.process_spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.save(phase="Running", pid=self.child.pid, startedAt=now_iso(), finishedAt=None)
            # The pod's terminationGracePeriodSeconds when its spec gives one (a language model's
            # streams may take minutes to finish), else GRACE_SECONDS.
            grace = float(self.process_spec.get("graceSeconds") or GRACE_SECONDS)
            while True:
                try:
                    return self.child.wait(timeout=grace if self.stopping else None)
                except subprocess.TimeoutExpired:
                    self.child.kill()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        always = self.process_spec.get("restartPolicy") == "Always"
        backoff = 1.0
        self.save(firstStartedAt=now_iso())
        while True:
            started = time.monotonic()
            code = self.run_once()
            self.save(phase="Exited", exitCode=code, finishedAt=now_iso(), stopped=self.stopping)
            if not always or self.stopping:
                return 0
            # A server that ran a while before dying starts over with a short back-off.
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.save(phase="BackOff", restarts=self.status["restarts"] + 1)
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.1)
            if self.stopping:
                return 0
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


if __name__ == "__main__":
    sys.exit(Supervisor(Path(sys.argv[1])).run())
