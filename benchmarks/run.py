"""The predict-path benchmark (`make bench`): our model server against the peers on the same model,
and our control plane's predict proxy against calling the model server directly.

    .venv/bin/python benchmarks/run.py [--quick] [--only ours,kserve,control-plane] [--passes 2]
                                       [--seconds 6] [--pin] [--output docs/benchmarks.md]

It trains the models (our sklearn_regressor handler, logged to a fresh MLflow server), makes the
peers' virtual environments under benchmarks/.work/venvs (pip, pinned; minutes, once), starts each
server with one worker on the same model, checks its answer against scikit-learn's, and drives it
with wrk. Passes alternate the order of the servers; every figure of every pass is reported.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from app import embedded_mlflow
from benchmarks import environments, nginx, report
from benchmarks.control_plane import ControlPlane, stop_workloads
from benchmarks.load import LoadError, LoadResult, require_wrk, run_wrk
from benchmarks.models import (
    BATCH_ROWS,
    CLASSIFIER_HANDLER,
    REGRESSOR_HANDLER,
    BenchModel,
    SetupError,
    profile_for,
    train_all,
)
from benchmarks.processes import free_port, request
from benchmarks.results import Load, Measurement
from benchmarks.servers import TARGETS, Target

WORK = Path(__file__).resolve().parent / ".work"
CONTROL_PLANE = "control-plane"
# The API without uvicorn's access log (one line written per request at the default level, info).
QUIET_API = {"MLOPS_LOG_LEVEL": "warning"}
ALL = (*TARGETS, CONTROL_PLANE)


@dataclass
class Settings:
    quick: bool
    passes: int
    seconds: float
    latency_seconds: float
    warmup_seconds: float
    only: tuple[str, ...]
    models: tuple[str, ...]
    worker_counts: tuple[int, ...]
    server_cpus: str | None
    load_cpus: str | None


def loads_for(model: str, settings: Settings) -> list[Load]:
    loads = [Load("1 row, c=32", 1, 32, settings.seconds), Load("1 row, c=1", 1, 1, settings.latency_seconds)]
    if model == "linear":
        loads.append(Load(f"{BATCH_ROWS} rows, c=32", BATCH_ROWS, 32, settings.seconds))
    return loads


def write_body(target: Target, rows: np.ndarray) -> Path:
    path = WORK / "bodies" / f"{target.name}-{len(rows)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(target.body(rows))
    return path


def check_answer(target: Target, url: str, model: BenchModel, rows: np.ndarray) -> None:
    """The server must answer the benchmark's request with scikit-learn's own predictions."""
    status, answer = request(url, "POST", target.body(rows))
    if status != 200:
        raise RuntimeError(f"{target.name} answered {status}: {answer[:300]!r}")
    got = target.predictions(answer)
    if not model.agrees(got, rows):
        raise RuntimeError(f"{target.name} predicted {got[:3]}..., scikit-learn {model.estimator.predict(rows)[:3]}...")


def drive(url: str, target: Target, model: BenchModel, loads: list[Load], settings: Settings,
          hop_cpu: Callable[[], float] | None = None) -> list[tuple[Load, LoadResult, float | None]]:
    """Each load in turn; with `hop_cpu` (a process tree's CPU seconds so far), also the CPU time
    that tree used per request of each load, in microseconds."""
    results = []
    for load in loads:
        rows = model.rows[: load.rows]
        try:
            check_answer(target, url, model, rows)
        except OSError as exc:  # still busy with the last load's backlog (a wrong answer is not caught)
            print(f"    {load.name:>14}: no answer within the timeout ({exc}); this server's other loads skipped",
                  flush=True)
            break
        body = write_body(target, rows)
        run_wrk(url, body, load.connections, settings.warmup_seconds, settings.load_cpus)
        cpu_before = hop_cpu() if hop_cpu else 0.0
        result = run_wrk(url, body, load.connections, load.seconds, settings.load_cpus)
        cpu_us = (hop_cpu() - cpu_before) * 1e6 / result.requests if hop_cpu and result.requests else None
        print(f"    {load.name:>14}: {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
              f"  errors {result.errors}" + (f"  hop CPU {cpu_us:.0f} µs/request" if cpu_us else ""), flush=True)
        results.append((load, result, cpu_us))
    return results


def measure_server(target: Target, model: BenchModel, peer: environments.PeerEnv | None, tracking_uri: str,
                   settings: Settings, pass_number: int) -> list[Measurement]:
    launch = target.launch(model, peer, WORK, tracking_uri)
    print(f"  {target.title} on {model.title}", flush=True)
    server = launch.server.start(settings.server_cpus)
    try:
        results = drive(launch.predict_url, target, model, loads_for(model.key, settings), settings)
        rss = server.rss_mib()
    finally:
        server.stop()
    return [Measurement(pass_number, model.key, target.name, load, result, server.startup_seconds, rss)
            for load, result, _ in results]


def measure_control_plane(model: BenchModel, tracking_uri: str, settings: Settings, pass_number: int,
                          workers: int, api_env: dict[str, str]) -> list[Measurement]:
    """Calls through the API, straight to the model server it deployed, and through nginx in front of
    that server (the floor of one proxy hop), in alternating order."""
    ours = TARGETS["ours"]
    plane = ControlPlane(WORK, tracking_uri, workers, api_env)
    settings_text = [f"{workers} API worker{'s' if workers > 1 else ''}", *(f"{k}={v}" for k, v in api_env.items())]
    variant = ", ".join(settings_text)
    print(f"  control plane ({variant}) on {model.title}", flush=True)
    plane.start(settings.server_cpus)
    measurements = []
    try:
        plane.deploy(model, ours.body(model.rows[:1]))
        routes = ["direct", "proxied", *(["nginx"] if nginx.available() else [])]
        if pass_number % 2 == 0:
            routes.reverse()
        loads = loads_for(model.key, settings)[:2]
        for route in routes:
            print(f"   {route}", flush=True)
            proxied = route == "proxied"
            if route == "nginx":
                server, url = nginx.nginx_in_front_of(plane.direct_url(), WORK)
                server.start(settings.server_cpus)
                try:
                    results = drive(url, ours, model, loads, settings, server.cpu_seconds)
                finally:
                    server.stop()
                name = f"nginx in front of the model server (beside the API: {variant})"
            else:
                url = plane.predict_url if proxied else plane.direct_url()
                results = drive(url, ours, model, loads, settings, plane.api_cpu_seconds if proxied else None)
                name = f"proxied ({variant})" if proxied else f"direct (beside the API: {variant})"
            for load, result, cpu_us in results:
                measurements.append(Measurement(
                    pass_number, model.key, name, load, result, plane.server.startup_seconds if proxied else None,
                    plane.api_rss_mib() if proxied else None, route, variant, cpu_us))
        plane.undeploy()
    finally:
        plane.stop()
    return measurements


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
            "os": platform.platform(), "python": platform.python_version(),
            "wrk": subprocess.run([require_wrk(), "-v"], capture_output=True, text=True).stdout.split("\n")[0]}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one pass, 3 s per measurement, the linear model only")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    parser.add_argument("--passes", type=int, default=2, help="passes over all servers, in alternating order")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each c=32 measurement")
    parser.add_argument("--workers", default="1,2", help="MLOPS_WORKERS values for the control plane")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 1, wrk on CPU 0 (taskset)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent.parent / "docs" /
                        "benchmarks.md", help="the report to write")
    parser.add_argument("--no-write", action="store_true", help="print the figures, do not write the report")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(ALL)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(ALL)})")
    seconds = 3.0 if args.quick else args.seconds
    settings = Settings(
        quick=args.quick,
        passes=1 if args.quick else args.passes,
        seconds=seconds,
        latency_seconds=max(2.0, seconds / 2),
        warmup_seconds=1.0,
        only=only,
        models=("linear",) if args.quick else ("linear", "forest", "classifier"),
        worker_counts=tuple(int(value) for value in args.workers.split(",")),
        server_cpus="1" if args.pin else None,
        load_cpus="0" if args.pin else None,
    )
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    try:
        require_wrk()
        for handler in (REGRESSOR_HANDLER, CLASSIFIER_HANDLER):
            profile_for(handler)
    except (LoadError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # MLflow's progress bars and run links would drown the harness's own lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = datetime.now(UTC)
    loads_before = load_average()
    print(f"load average before: {loads_before}", flush=True)
    mlflow_dir = WORK / "mlflow"
    shutil.rmtree(mlflow_dir, ignore_errors=True)
    stop_workloads(WORK / "control-plane")
    shutil.rmtree(WORK / "control-plane", ignore_errors=True)
    tracking_uri, mlflow_process = embedded_mlflow.start(mlflow_dir, free_port())
    measurements: list[Measurement] = []
    try:
        print("training the models", flush=True)
        models = train_all(tracking_uri, WORK, settings.models)
        targets = [TARGETS[name] for name in TARGETS if name in settings.only]
        peers = {t.name: environments.ensure(t.env_name, WORK / "venvs") for t in targets if t.env_name}
        for number in range(1, settings.passes + 1):
            print(f"pass {number}", flush=True)
            order = targets if number % 2 else list(reversed(targets))
            for model in (model for model in models if model.peers):
                for target in order:
                    measurements += measure_server(target, model, peers.get(target.name), tracking_uri, settings,
                                                   number)
            if CONTROL_PLANE in settings.only:
                # Every worker count on the fastest model server (the hardest case for the proxy), and
                # without uvicorn's access log; the first worker count on the slower model servers.
                first = settings.worker_counts[0]
                sessions = [(models[0], workers, {}) for workers in settings.worker_counts]
                sessions += [(models[0], first, QUIET_API)] if not settings.quick else []
                sessions += [(model, first, {}) for model in models[1:]]
                for model, workers, api_env in sessions if number % 2 else reversed(sessions):
                    measurements += measure_control_plane(model, tracking_uri, settings, number, workers, api_env)
    finally:
        embedded_mlflow.stop(mlflow_process) if mlflow_process else None
    context = report.Context(
        started=started, finished=datetime.now(UTC), command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=machine(), load_before=loads_before, load_after=load_average(),
        pinned=settings.server_cpus is not None, versions={name: env.versions() for name, env in peers.items()},
        models={model.key: model.title for model in models}, seconds=settings.seconds,
        api_environment={key: value for key, value in os.environ.items()
                         if key.startswith("MLOPS_") and key not in ControlPlane.OWN_VARIABLES},
        latency_seconds=settings.latency_seconds,
    )
    text = report.render(context, measurements)
    (WORK / "last-report.md").write_text(text)  # kept whatever --output says
    if args.no_write:
        print(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
