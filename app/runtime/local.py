"""LocalRuntime: the same manifests a cluster would receive, run as processes on this machine.

A Job's or a Deployment's container becomes a `script/` process under a supervisor
(app/runtime/local_supervisor.py) that outlives the API; a Service becomes a loopback port.
Every task lives in DATA_DIR/tasks/<kind>/<task id>/, created with an atomic mkdir (so of two
concurrent creates exactly one wins), which is all the state there is: a restarted API, or a
second worker, sees every task again.

A Deployment runs one model-server process per revision of its pod template, in
pods/<revision>/, as a Deployment's rolling update would: an update starts the new revision's
process, the endpoint switches to it once it is ready (serving.json says which revision serves),
and the old one is stopped after a drain period, once every API worker has switched.
"""

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import RequestError

from app.core.manifests import (
    KIND_CANARY,
    KIND_INFERENCE,
    KIND_TRAINING,
    LABEL_MODEL_ID,
    LABEL_PROFILE,
    LABEL_TASK_KIND,
    READINESS_PATH,
    request_of,
    revision_of,
    rollout_of,
    served_model_name_of,
)
from app.errors import TaskConflict, TaskNotFound
from app.runtime.base import AlreadyExists, Canary, Endpoint, EndpointCache, WorkloadState
from app.runtime.local_supervisor import GRACE_SECONDS, write_json_atomic
from app.schemas.inference import DeploymentStatus
from app.schemas.training import TrainingStatus
from app.settings import PROJECT_ROOT
from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, TERMINATION_LOG_ENV

# A model server that crashed this many times without becoming ready is reported Failed
# (it keeps being restarted, as a Deployment's pod would be).
FAILED_AFTER_RESTARTS = 2
READY_PROBE_EVERY_SECONDS = 2.0
PROBE_TIMEOUT = timedelta(seconds=1)
# Failed probes in a row before a Ready model server is taken out of rotation (Kubernetes' default).
READY_FAILURE_THRESHOLD = 3
# After the endpoint switches to a new revision, the old model server keeps running this long, so
# every API worker (each switches at its next reconcile) and every request in flight is done with it.
DRAIN_SECONDS = 5.0
# Workload environment variables that only make sense inside a container.
_CONTAINER_ONLY_ENV = {"HOME"}


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail_lines(path: Path, tail: int | None) -> str:
    try:
        with path.open("rb") as file:
            if tail is None:
                return file.read().decode(errors="replace")
            return b"".join(deque(file, maxlen=tail)).decode(errors="replace") if tail > 0 else ""
    except FileNotFoundError:
        return ""


def _remap(value: str, mounts: dict[str, str]) -> str:
    """A path inside a mounted claim, as the local directory that stands for it."""
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return local + value[len(mount_path):]
    return value


def _template_revision(manifests: list[dict[str, Any]]) -> int:
    return revision_of(manifests[0]["spec"]["template"]) or 1


def _pod_name(revision: int, replica: int = 0) -> str:
    return str(revision) if replica == 0 else f"{revision}-{replica}"


def _parse_pod_name(name: str) -> tuple[int, int] | None:
    revision, _, replica = name.partition("-")
    if not revision.isdigit() or (replica and not replica.isdigit()):
        return None
    return int(revision), int(replica or 0)


def _replicas(record: dict[str, Any]) -> int:
    """The stable Deployment's replicas: that many model servers of the serving revision."""
    return max(1, int(record["manifests"][0]["spec"].get("replicas") or 1))


def _canary_workload(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The canary's Deployment among a task's objects, if one runs."""
    return next((obj for obj in manifests if obj["kind"] == "Deployment"
                 and obj["metadata"]["labels"].get(LABEL_TASK_KIND) == KIND_CANARY), None)


def _canary_weight(record: dict[str, Any]) -> int:
    canary = (rollout_of(record["manifests"][0]) or {}).get("canary") or {}
    return int(canary.get("weight", 0))


def _last_words(task_dir: Path) -> str | None:
    """The workload's termination message, else its last log line (FallbackToLogsOnError)."""
    try:
        message = (task_dir / "termination.log").read_text().strip()
    except FileNotFoundError:
        message = ""
    if not message:
        lines = [line for line in _tail_lines(task_dir / "output.log", 20).splitlines() if line.strip()]
        message = lines[-1].strip() if lines else ""
    return message[-2000:] or None


class LocalRuntime:
    allows_local_paths = True

    def __init__(
        self,
        data_dir: Path,
        config_values: dict[str, str | None],
        probe_interval: float = 0.5,
        project_root: Path = PROJECT_ROOT,
        python: str = sys.executable,
    ):
        self.root = Path(data_dir) / "tasks"
        self.config_values = config_values
        self.probe_interval = probe_interval
        self.project_root = project_root
        self.python = python
        self.endpoints = EndpointCache()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._last_probe: dict[str, float] = {}
        self._readiness_paths: dict[str, str] = {}
        self._probe_failures: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._probes: Client | None = None
        self._retiring: set[Path] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for kind in (KIND_TRAINING, KIND_INFERENCE):
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self._probes = ClientBuilder().timeout(PROBE_TIMEOUT).no_proxy().follow_redirects(False).build()
        await asyncio.to_thread(self.reconcile)
        # Model servers that outlived a restart are ready at once, not after the first loop.
        await self.probe_all()
        self._loop_task = asyncio.create_task(self._reconcile_forever())

    def unready_reason(self) -> str | None:
        return None  # its processes run on this machine: nothing to reach

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._probes:
            await self._probes.close()

    # -- the Runtime contract --------------------------------------------------------------

    def create(self, kind: str, task_id: str, manifests: list[dict[str, Any]]) -> WorkloadState:
        task_dir = self._dir(kind, task_id)
        task_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            task_dir.mkdir()
        except FileExistsError:
            existing = self._wait_for_state(kind, task_id)
            if existing is None:  # deleted meanwhile: the caller may try again
                raise
            raise AlreadyExists(existing) from None
        try:
            record: dict[str, Any] = {
                "uid": uuid.uuid4().hex,
                "createdAt": datetime.now(UTC).isoformat(),
                "manifests": manifests,
                "generation": 1,  # counts changes, for an update to see a concurrent one
            }
            if kind == KIND_INFERENCE:
                revision = _template_revision(manifests)
                record |= {"revision": revision, "ports": {str(revision): _free_port()}}
                self._start_pod(kind, task_dir, record, revision)
            else:
                self._start_pod(kind, task_dir, record, None)
            write_json_atomic(task_dir / "task.json", record)
        except BaseException:
            shutil.rmtree(task_dir, ignore_errors=True)
            raise
        if kind == KIND_INFERENCE:
            self._put_endpoint(task_id, record, record["revision"], ready=False)
        state = self._state(kind, task_id)
        assert state is not None
        return state

    def update(self, kind: str, task_id: str, manifests: list[dict[str, Any]], current: WorkloadState) -> WorkloadState:
        task_dir = self._dir(kind, task_id)
        try:
            lock = open(task_dir / "lock", "a")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = _read_json(task_dir / "task.json")
            if record is None or (task_dir / "deleting").exists():
                raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
            if record["uid"] != current.uid or record.get("generation", 1) != current.extra.get("generation"):
                raise TaskConflict(f"deployment '{task_id}' changed while this update was made; read it and "
                                   "try again", field="taskId")
            revision = _template_revision(manifests)
            if not (task_dir / "serving.json").exists():  # the revision serving until now
                write_json_atomic(task_dir / "serving.json", {"revision": record["revision"], "retiring": {}})
            record["manifests"] = manifests
            if revision != record["revision"]:
                record["revision"] = revision
                if str(revision) not in record["ports"]:  # else a canary's, promoted: it runs already
                    record["ports"][str(revision)] = _free_port()
                    self._start_pod(kind, task_dir, record, revision)
            canary = _canary_workload(manifests)
            before = record.pop("canary", None)
            if canary is not None:
                canary_revision = _template_revision([canary])
                record["canary"] = {"revision": canary_revision}
                if str(canary_revision) not in record["ports"]:
                    record["ports"][str(canary_revision)] = _free_port()
                    self._start_pod(kind, task_dir, record, canary_revision, canary)
            if before is not None and before["revision"] not in (revision, record.get("canary", {}).get("revision")):
                self._drain(task_dir, str(before["revision"]))  # an aborted canary: calls in flight finish
            record["generation"] = record.get("generation", 1) + 1
            write_json_atomic(task_dir / "task.json", record)
        state = self._state(kind, task_id)
        assert state is not None
        return state

    def get(self, kind: str, task_id: str, fresh: bool = False) -> WorkloadState | None:
        return self._state(kind, task_id)  # read from disk: always fresh

    def list(self, kind: str) -> list[WorkloadState]:
        kind_dir = self.root / kind
        states = [self._state(kind, path.name) for path in sorted(kind_dir.iterdir())] if kind_dir.exists() else []
        return [state for state in states if state is not None]

    def delete(self, kind: str, task_id: str) -> bool:
        task_dir = self._dir(kind, task_id)
        if not (task_dir / "task.json").exists():
            return False
        # Under the lock a restart takes, and marked first: the reconcile loop (of any worker)
        # never restarts what is being removed.
        with open(task_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (task_dir / "deleting").touch()
            self.endpoints.remove(task_id)
            for pod_dir in self._pod_dirs(kind, task_dir).values():
                self._stop_supervisor(pod_dir)
        shutil.rmtree(task_dir, ignore_errors=True)
        return True

    def read_logs(self, kind: str, task_id: str, tail: int | None) -> str:
        return _tail_lines(self._log_path(kind, task_id), tail)

    def _log_path(self, kind: str, task_id: str) -> Path:
        """A Job's output; a Deployment's newest revision's (the one being rolled out, or serving)."""
        task_dir = self._dir(kind, task_id)
        if kind == KIND_TRAINING:
            return task_dir / "output.log"
        record = _read_json(task_dir / "task.json") or {}
        return self._pod_dir(kind, task_dir, record.get("revision", 1)) / "output.log"

    async def follow_logs(self, kind: str, task_id: str, tail: int | None) -> AsyncIterator[bytes]:
        path = await asyncio.to_thread(self._log_path, kind, task_id)
        first = await asyncio.to_thread(_tail_lines, path, tail)
        if first:
            yield first.encode()
        offset = path.stat().st_size if path.exists() else 0
        while True:
            chunk = await asyncio.to_thread(self._read_from, path, offset)
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            state = await asyncio.to_thread(self._state, kind, task_id)
            if state is None or state.phase in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
                rest = await asyncio.to_thread(self._read_from, path, offset)
                if rest:
                    yield rest
                return
            await asyncio.sleep(0.25)

    # -- state ------------------------------------------------------------------------------

    def _dir(self, kind: str, task_id: str) -> Path:
        return self.root / kind / task_id

    @staticmethod
    def _pod_dir(kind: str, task_dir: Path, revision: int | None, replica: int = 0) -> Path:
        """Where a workload's process lives: a Job's in its task directory, a Deployment's revision's
        in pods/<revision>/ (its first replica) and pods/<revision>-<n>/ (the others)."""
        if kind == KIND_TRAINING or revision is None:
            return task_dir
        return task_dir / "pods" / _pod_name(revision, replica)

    def _pod_dirs(self, kind: str, task_dir: Path) -> dict[tuple[int, int], Path]:
        """(revision, replica) -> directory."""
        if kind == KIND_TRAINING:
            return {(0, 0): task_dir}
        pods = task_dir / "pods"
        found = pods.iterdir() if pods.exists() else ()
        return {parsed: path for path in found if (parsed := _parse_pod_name(path.name)) is not None}

    @staticmethod
    def _serving_revision(task_dir: Path, record: dict[str, Any]) -> int:
        """The revision whose model server the endpoint uses: the one serving.json names, or, until
        a first update, the only one."""
        serving = _read_json(task_dir / "serving.json") or {}
        return serving.get("revision", record.get("revision", 1))

    @staticmethod
    def _read_from(path: Path, offset: int) -> bytes:
        try:
            with path.open("rb") as file:
                file.seek(offset)
                return file.read(1 << 20)
        except FileNotFoundError:
            return b""

    def _wait_for_state(self, kind: str, task_id: str, timeout: float = 5.0) -> WorkloadState | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._dir(kind, task_id).exists():
                return None
            state = self._state(kind, task_id)
            if state is not None:
                return state
            time.sleep(0.02)
        return None

    def _state(self, kind: str, task_id: str) -> WorkloadState | None:
        task_dir = self._dir(kind, task_id)
        record = _read_json(task_dir / "task.json")
        if record is None or (task_dir / "deleting").exists():
            return None
        state = WorkloadState(
            kind=kind,
            task_id=task_id,
            request=request_of(record["manifests"][0]),
            phase="",
            created_at=_parse_time(record.get("createdAt")),
            uid=record["uid"],
            extra={"generation": record.get("generation", 1)},
        )
        if kind == KIND_TRAINING:
            status = _read_json(task_dir / "status.json") or {}
            state.start_time = _parse_time(status.get("firstStartedAt") or status.get("startedAt"))
            self._training_phase(state, status, self._supervisor_alive(task_dir), task_dir)
        else:
            self._inference_phase(state, task_dir, record)
        return state

    @staticmethod
    def _training_phase(state: WorkloadState, status: dict[str, Any], alive: bool, task_dir: Path) -> None:
        phase = status.get("phase")
        if phase == "Exited":
            state.completion_time = _parse_time(status.get("finishedAt"))
            code = status.get("exitCode")
            if code == 0:
                state.phase = TrainingStatus.SUCCEEDED
            else:
                state.phase = TrainingStatus.FAILED
                reason = "stopped by a signal" if code is not None and code < 0 else f"exited with code {code}"
                words = _last_words(task_dir)
                state.message = f"trainer {reason}: {words}" if words else f"trainer {reason}"
        elif not alive:
            state.phase = TrainingStatus.FAILED
            state.message = "the trainer process stopped before it finished (its supervisor is gone)"
        elif phase == "Running":
            state.phase = TrainingStatus.RUNNING
        else:
            state.phase = TrainingStatus.PENDING
            state.message = "starting the trainer process"

    def _inference_phase(self, state: WorkloadState, task_dir: Path, record: dict[str, Any]) -> None:
        newest = record.get("revision", 1)
        serving = self._serving_revision(task_dir, record)
        pod_dir = self._pod_dir(KIND_INFERENCE, task_dir, serving)
        status = _read_json(pod_dir / "status.json") or {}
        alive = self._supervisor_alive(pod_dir)
        state.start_time = _parse_time(status.get("firstStartedAt") or status.get("startedAt"))
        state.extra["restarts"] = status.get("restarts", 0)
        state.rollout = rollout_of(record["manifests"][0])
        endpoint = self.endpoints.get(state.task_id)
        if endpoint is not None and endpoint.base_url != self._url(record, serving):
            endpoint = None  # this worker has not switched to the serving revision yet
        if endpoint is not None and not endpoint.ready and status.get("phase") == "Running":
            # Another API worker may have seen it ready first: ask the server now, not at the next probe.
            endpoint = self._probe_now(endpoint)
        ready = endpoint is not None and endpoint.ready
        state.ready_replicas = (1 + len(endpoint.alternates)) if endpoint is not None and ready else 0
        state.serving_revision = serving if ready else None
        if newest != serving:
            state.revision_problem = self._crash_report(self._pod_dir(KIND_INFERENCE, task_dir, newest))
        canary = (record.get("canary") or {}).get("revision")
        if canary is not None:
            entry = self.endpoints.canary(state.task_id)
            state.canary_ready_replicas = 1 if entry is not None and entry.endpoint.ready else 0
            state.canary_problem = self._crash_report(self._pod_dir(KIND_INFERENCE, task_dir, canary))
        if ready:
            assert endpoint is not None
            state.phase = DeploymentStatus.READY
            state.message = endpoint.message
        elif (report := self._crash_report(pod_dir)) is not None:
            state.phase = DeploymentStatus.FAILED
            state.message = report
        else:
            state.phase = DeploymentStatus.PENDING
            state.message = "model server is starting" if alive else "model server is being restarted"

    @staticmethod
    def _crash_report(pod_dir: Path) -> str | None:
        """Why a model server keeps failing, once it has been restarted FAILED_AFTER_RESTARTS times."""
        status = _read_json(pod_dir / "status.json") or {}
        restarts = status.get("restarts", 0)
        if status.get("phase") not in ("Exited", "BackOff") or restarts < FAILED_AFTER_RESTARTS:
            return None
        words = _last_words(pod_dir)
        return (f"model server exited with code {status.get('exitCode')} and was restarted {restarts} times"
                + (f": {words}" if words else ""))

    # -- processes --------------------------------------------------------------------------

    def _start_pod(self, kind: str, task_dir: Path, record: dict[str, Any], revision: int | None,
                   workload: dict[str, Any] | None = None, replica: int = 0) -> None:
        """The process of a Job, or of a Deployment's revision: `workload`'s pod template (default:
        the task's first object's)."""
        pod_dir = self._pod_dir(kind, task_dir, revision, replica)
        pod_dir.mkdir(parents=True, exist_ok=True)
        port = record["ports"][_pod_name(revision, replica)] if revision is not None else None
        spec = self._process_spec(kind, pod_dir, workload or record["manifests"][0], port)
        # The process spec holds the workload's resolved credentials: owner-only.
        write_json_atomic(pod_dir / "process.json", spec, mode=0o600)
        self._spawn_supervisor(pod_dir)

    def _process_spec(self, kind: str, task_dir: Path, workload: dict[str, Any], port: int | None) -> dict[str, Any]:
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mounts = self._claim_mounts(pod, container)
        command = [*container["command"], *container.get("args", [])]
        if command[0] == "python":
            command[0] = self.python
        # The API's own settings (its tokens among them) are not the workload's business.
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLOPS_")}
        for item in container.get("env", []):
            if item["name"] in _CONTAINER_ONLY_ENV:
                continue
            value = self._env_value(item)
            if value is not None:
                env[item["name"]] = _remap(value, mounts)
        env[TERMINATION_LOG_ENV] = str(task_dir / "termination.log")
        if port is not None:
            env[SERVE_HOST_ENV] = "127.0.0.1"
            env[SERVE_PORT_ENV] = str(port)
        return {
            "command": command,
            "env": env,
            "cwd": str(self.project_root),
            "restartPolicy": "Never" if kind == KIND_TRAINING else "Always",
            # How long a stopping model server may take to finish its calls in flight (a retired
            # revision's streams end on it); a delete does not wait this long.
            "graceSeconds": pod.get("terminationGracePeriodSeconds"),
        }

    def _claim_mounts(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """A PersistentVolumeClaim becomes a directory shared by every task, as the claim would be:
        container mount path -> DATA_DIR/volumes/<claim name>."""
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in claims:
                local = self.root.parent / "volumes" / claims[mount["name"]]
                local.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"].rstrip("/")] = str(local)
        return mounts

    def _env_value(self, item: dict[str, Any]) -> str | None:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom", {})
        if "configMapKeyRef" in source:
            return self.config_values.get(source["configMapKeyRef"]["key"])
        if "secretKeyRef" in source:
            # Locally, credentials come from the API's own environment (e.g. AWS_ACCESS_KEY_ID).
            return os.environ.get(source["secretKeyRef"]["key"])
        return None

    def _spawn_supervisor(self, task_dir: Path) -> None:
        child = subprocess.Popen(
            [self.python, "-m", "app.runtime.local_supervisor", str(task_dir)],
            cwd=self.project_root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the API and its Ctrl-C
        )
        self._children[child.pid] = child
        write_json_atomic(task_dir / "supervisor.json", {"pid": child.pid, "startedAt": datetime.now(UTC).isoformat()})

    def _supervisor_pid(self, task_dir: Path) -> int | None:
        info = _read_json(task_dir / "supervisor.json")
        return info.get("pid") if info else None

    def _supervisor_alive(self, task_dir: Path) -> bool:
        pid = self._supervisor_pid(task_dir)
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # The pid may have been reused by an unrelated process since.
        return b"local_supervisor" in cmdline and str(task_dir).encode() + b"\0" in cmdline

    def _stop_supervisor(self, task_dir: Path, grace_seconds: float = GRACE_SECONDS) -> None:
        pid = self._supervisor_pid(task_dir)
        if pid is None or not self._supervisor_alive(task_dir):
            return
        # As the kubelet does, SIGTERM goes to the container's main process only: the supervisor
        # hands it to the workload, which hands it on (vLLM's API server then lets its streams
        # finish and stops its own engine). Sent to the whole group, it would stop the engine
        # under the server and cut every stream.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + 2
        while time.monotonic() < deadline and self._supervisor_alive(task_dir):
            time.sleep(0.05)
        # What the workload left behind goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)

    # -- reconcile: endpoints, readiness, restarts -----------------------------------------

    @staticmethod
    def _url(record: dict[str, Any], revision: int, replica: int = 0) -> str:
        return f"http://127.0.0.1:{record['ports'][_pod_name(revision, replica)]}"

    @staticmethod
    def _readiness_path(record: dict[str, Any]) -> str:
        container = record["manifests"][0]["spec"]["template"]["spec"]["containers"][0]
        return container.get("readinessProbe", {}).get("httpGet", {}).get("path", READINESS_PATH)

    def _put_endpoint(self, task_id: str, record: dict[str, Any], revision: int, ready: bool,
                      message: str | None = None) -> None:
        self._readiness_paths[task_id] = self._readiness_path(record)
        self.endpoints.put(self._endpoint(task_id, record, revision, ready, message))

    def _endpoint(self, task_id: str, record: dict[str, Any], revision: int, ready: bool,
                  message: str | None = None) -> Endpoint:
        deployment = record["manifests"][0]
        labels = deployment["metadata"]["labels"]
        return Endpoint(task_id, self._url(record, revision), ready, labels.get(LABEL_PROFILE, ""), message,
                        model_id=labels.get(LABEL_MODEL_ID), served_model_name=served_model_name_of(deployment),
                        revision=revision)

    def reconcile(self) -> None:
        """Bring the endpoint cache in line with the data directory: roll deployments to their
        newest revision, restart dead model servers, stop retired ones."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
        kind_dir = self.root / KIND_INFERENCE
        present = set()
        for task_dir in kind_dir.iterdir() if kind_dir.exists() else ():
            record = _read_json(task_dir / "task.json")
            if record is None or (task_dir / "deleting").exists():
                continue
            present.add(task_dir.name)
            self._reconcile_deployment(task_dir, record)
        for task_id in self.endpoints.task_ids() - present:
            self.endpoints.remove(task_id)

    def _reconcile_deployment(self, task_dir: Path, record: dict[str, Any]) -> None:
        task_id = task_dir.name
        newest = record.get("revision", 1)
        serving = self._serving_revision(task_dir, record)
        switched = False
        if newest != serving and self._answers_ready(self._url(record, newest) + self._readiness_path(record)):
            serving, switched = self._switch(task_dir, newest), True
        endpoint = self.endpoints.get(task_id)
        if endpoint is None or endpoint.base_url != self._url(record, serving):
            self._put_endpoint(task_id, record, serving, ready=switched)
        canary = (record.get("canary") or {}).get("revision")
        if canary is not None and str(canary) in record["ports"]:
            ready = self._answers_ready(self._url(record, canary) + self._readiness_path(record))
            self.endpoints.put_canary(task_id, Canary(self._endpoint(task_id, record, canary, ready),
                                                      _canary_weight(record)))
        else:
            self.endpoints.put_canary(task_id, None)
        replicas = _replicas(record)
        if serving == newest:
            self._scale(task_id, task_dir, record, newest, replicas)
        retiring = (_read_json(task_dir / "serving.json") or {}).get("retiring", {})
        now = time.time()
        for (revision, replica), pod_dir in self._pod_dirs(KIND_INFERENCE, task_dir).items():
            needed = revision in (newest, serving, canary) and (replica == 0 or (revision == serving and
                                                                replica < replicas))
            if needed or retiring.get(str(revision), 0) > now or retiring.get(pod_dir.name, 0) > now:
                if not self._supervisor_alive(pod_dir):
                    self._restart_supervisor(task_dir, pod_dir)
            elif revision == serving and str(revision) not in retiring and pod_dir.name not in retiring:
                with open(task_dir / "lock", "a") as lock:  # a replica scaled away: calls in flight finish
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    self._drain(task_dir, pod_dir.name)
            else:
                self._retire(task_dir, revision, pod_dir)

    def _scale(self, task_id: str, task_dir: Path, record: dict[str, Any], revision: int, replicas: int) -> None:
        """Run `replicas` model servers of the serving revision; the ready ones beside the first are
        the endpoint's alternates (the data plane balances between them)."""
        for replica in range(1, replicas):
            if not self._pod_dir(KIND_INFERENCE, task_dir, revision, replica).exists():
                record = self._add_replica(task_dir, revision, replica) or record
        path = self._readiness_path(record)
        ready = tuple(url for replica in range(1, replicas)
                      if _pod_name(revision, replica) in record["ports"]
                      and self._answers_ready((url := self._url(record, revision, replica)) + path))
        endpoint = self.endpoints.get(task_id)
        if endpoint is not None and endpoint.alternates != ready:
            self.endpoints.put(replace(endpoint, alternates=ready))

    def _add_replica(self, task_dir: Path, revision: int, replica: int) -> dict[str, Any] | None:
        """Start one more model server of `revision` (under the task's lock); the record after."""
        with open(task_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = _read_json(task_dir / "task.json")
            if record is None or (task_dir / "deleting").exists() or record.get("revision") != revision:
                return None
            if self._pod_dir(KIND_INFERENCE, task_dir, revision, replica).exists():
                return record
            name = _pod_name(revision, replica)
            record["ports"][name] = record["ports"].get(name) or _free_port()
            write_json_atomic(task_dir / "task.json", record)
            serving = _read_json(task_dir / "serving.json")
            if serving is not None and name in serving.get("retiring", {}):  # scaled down, then up again
                del serving["retiring"][name]
                write_json_atomic(task_dir / "serving.json", serving)
            self._start_pod(KIND_INFERENCE, task_dir, record, revision, replica=replica)
            return record

    @staticmethod
    def _answers_ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return True
        except OSError:  # refused, too slow, or a status other than 2xx
            return False

    def _switch(self, task_dir: Path, newest: int) -> int:
        """Make `newest` the serving revision (under the task's lock: several workers may see it
        ready at once); the one it replaces drains for DRAIN_SECONDS. Returns the serving revision."""
        with open(task_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = _read_json(task_dir / "task.json") or {}
            serving = _read_json(task_dir / "serving.json") or {"revision": newest, "retiring": {}}
            if record.get("revision") != newest or serving["revision"] == newest:
                return serving["revision"]
            write_json_atomic(task_dir / "serving.json", {**serving, "revision": newest})
            self._drain(task_dir, str(serving["revision"]))
            return newest

    @staticmethod
    def _drain(task_dir: Path, name: str) -> None:
        """Keep the model servers of a revision ("3"), or one replica ("3-1"), for DRAIN_SECONDS
        more (call under the task's lock)."""
        serving = _read_json(task_dir / "serving.json") or {}
        retiring = {**serving.get("retiring", {}), name: time.time() + DRAIN_SECONDS}
        write_json_atomic(task_dir / "serving.json", {**serving, "retiring": retiring})

    def _retire(self, task_dir: Path, revision: int, pod_dir: Path) -> None:
        """Stop a model server no revision needs any more and remove its directory (in the
        background: a graceful stop takes seconds)."""
        if pod_dir in self._retiring:
            return
        self._retiring.add(pod_dir)

        def stop() -> None:
            try:
                with open(task_dir / "lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    record = _read_json(task_dir / "task.json") or {}
                    serving = self._serving_revision(task_dir, record)
                    replica = (_parse_pod_name(pod_dir.name) or (revision, 0))[1]
                    needed = (record.get("revision"), serving, (record.get("canary") or {}).get("revision"))
                    if revision in needed and (replica == 0 or (revision == serving and replica < _replicas(record))):
                        return  # rolled back to it, made a canary or scaled up, meanwhile
                    (pod_dir / "retired").touch()
                spec = _read_json(pod_dir / "process.json") or {}
                # Outside the lock: a language model's streams may take minutes to end on it.
                self._stop_supervisor(pod_dir, float(spec.get("graceSeconds") or GRACE_SECONDS))
                shutil.rmtree(pod_dir, ignore_errors=True)
            except OSError:
                pass  # the task was deleted meanwhile
            finally:
                self._retiring.discard(pod_dir)

        threading.Thread(target=stop, name=f"retire {pod_dir}", daemon=True).start()

    def _restart_supervisor(self, task_dir: Path, pod_dir: Path) -> None:
        # Several API workers may notice at once: one restarts it, under a lock.
        try:
            lock = open(task_dir / "lock", "a")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return  # deleted meanwhile
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            gone = (task_dir / "deleting").exists() or not (task_dir / "task.json").exists()
            if gone or (pod_dir / "retired").exists() or not pod_dir.exists() or self._supervisor_alive(pod_dir):
                return
            self._spawn_supervisor(pod_dir)

    def _probe_now(self, endpoint: Endpoint) -> Endpoint:
        """A blocking readiness probe (status reads run in a worker thread)."""
        path = self._readiness_paths.get(endpoint.task_id, READINESS_PATH)
        try:
            with urllib.request.urlopen(endpoint.base_url + path, timeout=0.5) as response:
                text = response.read().decode(errors="replace")
        except OSError:  # refused, too slow, or a status other than 2xx
            return endpoint
        ready = replace(endpoint, ready=True, message=self._readiness_detail(text))
        self.endpoints.put(ready)
        return ready

    @staticmethod
    def _readiness_detail(text: str) -> str | None:
        """What a ready server says of how it serves (e.g. which engine it chose): the `detail` of a
        JSON answer; None for an empty or other answer (vLLM's /health answers an empty 200)."""
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            return None
        return body.get("detail") if isinstance(body, dict) else None

    async def _probe(self, endpoint: Endpoint) -> None:
        assert self._probes is not None
        ready, message = False, "model server is not answering yet"
        try:
            path = self._readiness_paths.get(endpoint.task_id, READINESS_PATH)
            response = await self._probes.get(endpoint.base_url + path).build().send()
            text = await response.text()
        except RequestError:
            pass
        else:
            ready = response.status == 200
            message = (self._readiness_detail(text) if ready
                       else f"model server is loading (readiness answered {response.status})")
        # As a readinessProbe's failureThreshold: a Ready server that misses one probe (a busy CPU
        # delays its answer) stays Ready; several in a row, and it is not. A server that is gone
        # is seen at once anyway: the proxy marks it unready on a refused connection.
        failures = 0 if ready else self._probe_failures.get(endpoint.task_id, 0) + 1
        self._probe_failures[endpoint.task_id] = failures
        if endpoint.ready and not ready and failures < READY_FAILURE_THRESHOLD:
            return
        # Only the entry that was probed may be replaced: a status read's own probe (or a proxy
        # error) may have changed it meanwhile, and a stale answer must not undo that.
        if self.endpoints.get(endpoint.task_id) is endpoint:
            self.endpoints.put(replace(endpoint, ready=ready, message=message))

    async def probe_all(self) -> None:
        now = time.monotonic()
        due = []
        for task_id in self.endpoints.task_ids():
            endpoint = self.endpoints.get(task_id)
            if endpoint is None:
                continue
            if endpoint.ready and now - self._last_probe.get(task_id, 0) < READY_PROBE_EVERY_SECONDS:
                continue
            self._last_probe[task_id] = now
            due.append(self._probe(endpoint))
        await asyncio.gather(*due)

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.reconcile)
                await self.probe_all()
            except Exception as exc:  # keep the loop alive; say why once per failure
                print(f"local runtime: reconcile failed: {exc!r}", file=sys.stderr)
            await asyncio.sleep(self.probe_interval)
