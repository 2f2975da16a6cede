"""Driving a server with wrk: one POST body, fixed connections and duration, percentiles back.

The same load generator and script for every server, so that differences are the servers'.
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
RESULT_MARK = "BENCH_RESULT "


class LoadError(Exception):
    """wrk could not run, or its run produced no summary."""


@dataclass(frozen=True)
class LoadResult:
    connections: int
    seconds: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx/3xx answers together
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), then run again")
    return path


def run_wrk(url: str, body_file: Path, connections: int, seconds: float, cpus: str | None = None) -> LoadResult:
    """One wrk run (one thread); `cpus` pins it with taskset (e.g. "0")."""
    command = [require_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "--latency", "-s", str(LUA_SCRIPT), url]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)), None)
    if done.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({done.returncode}) on {url}: {done.stderr.strip() or done.stdout[-500:]}")
    raw = json.loads(line[len(RESULT_MARK):])
    errors = sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return LoadResult(
        connections=connections,
        seconds=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        errors=errors,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )
