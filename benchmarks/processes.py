"""Server processes of the benchmark: start (optionally pinned to CPUs), wait until ready, measure
resident memory and CPU time of the whole process tree, stop the whole process group."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def request(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP call: its status and body (error statuses included)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    call = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rfind(")") + 2 :].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int, skip: Callable[[str], bool] = lambda _: False) -> float:
    """Resident memory of a process and its descendants, in MiB; subtrees whose command line
    `skip` matches are left out (the control plane's model servers, counted separately)."""
    children = _children()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid != root and skip(_cmdline(pid)):
            continue
        total += _rss_kib(pid)
        stack.extend(children.get(pid, []))
    return total / 1024


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def tree_cpu_seconds(root: int, skip: Callable[[str], bool] = lambda _: False) -> float:
    """User and system CPU time a process and its live descendants have used, in seconds; subtrees
    whose command line `skip` matches are left out."""
    children = _children()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid != root and skip(_cmdline(pid)):
            continue
        total += _cpu_ticks(pid)
        stack.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """One server process (and its group); `ready_url` answers 200 once it can serve."""

    name: str
    command: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float | None = None
    _log: IO[bytes] | None = None

    def start(self, cpus: str | None = None, timeout: float = 180.0) -> "Server":
        command = ["taskset", "-c", cpus, *self.command] if cpus is not None else self.command
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, env={**os.environ, **self.env}, cwd=self.cwd, stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code}; see {self.log_path}")
            if http_status(self.ready_url, timeout=1.0) == 200:
                self.startup_seconds = time.monotonic() - started
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log_path}")

    def rss_mib(self, skip: Callable[[str], bool] = lambda _: False) -> float:
        return tree_rss_mib(self.process.pid, skip) if self.process else 0.0

    def cpu_seconds(self, skip: Callable[[str], bool] = lambda _: False) -> float:
        return tree_cpu_seconds(self.process.pid, skip) if self.process else 0.0

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
