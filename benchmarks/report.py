"""docs/benchmarks.md from one harness run: the machine, the load on it, the versions, the command,
and every pass's figures, ours beside the peers'."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from benchmarks.results import Measurement

OUR_PACKAGES = ("uvicorn", "httptools", "uvloop", "orjson", "numpy", "scikit-learn", "onnxruntime", "skl2onnx",
                "treelite", "pyreqwest", "fastapi", "starlette")
PEER_NAMES = ("mlflow", "mlserver", "kserve")

# Written by benchmarks/control_plane_scale.py; kept at the end of docs/benchmarks.md by both.
SCALE_REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-scale.md"


@dataclass(frozen=True)
class Context:
    started: datetime
    finished: datetime
    command: str
    machine: dict[str, str]
    load_before: str
    load_after: str
    pinned: bool
    versions: dict[str, dict[str, str]]
    models: dict[str, str]
    api_environment: dict[str, str]  # MLOPS_* variables the control plane inherited from the harness
    seconds: float
    latency_seconds: float


def _our_versions() -> str:
    found = []
    for name in OUR_PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cell(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _server_table(rows: list[Measurement], loads: list[str]) -> list[str]:
    by_server: dict[tuple[str, int], dict[str, Measurement]] = defaultdict(dict)
    for m in rows:
        by_server[(m.server, m.pass_number)][m.load.name] = m
    header = ["server", "pass"]
    for load in loads:
        header += [f"{load} req/s", f"{load} p50 ms", f"{load} p99 ms"]
    header += ["start-up to Ready s", "RSS MiB", "errors"]
    with_cpu = any(m.hop_cpu_us is not None for m in rows)
    if with_cpu:
        header.append("hop CPU µs/request at c=32")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (server, number), cells in sorted(by_server.items(), key=lambda item: (item[0][0] != "ours", item[0])):
        any_m = next(iter(cells.values()))
        row = [server, str(number)]
        for load in loads:
            m = cells.get(load)
            row += [_cell(m.result.rps if m else None), _cell(m.result.p50_ms if m else None, 2),
                    _cell(m.result.p99_ms if m else None, 1)]
        errors = sum(m.result.errors for m in cells.values())
        row += [_cell(any_m.startup_seconds, 1), _cell(any_m.rss_mib), str(errors)]
        if with_cpu:
            busiest = next((m for m in cells.values() if m.load.connections == 32), None)
            row.append(_cell(busiest.hop_cpu_us if busiest else None))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _ratios(rows: list[Measurement], load: str) -> list[str]:
    """Ours against the fastest peer, pass by pass."""
    lines = []
    for number in sorted({m.pass_number for m in rows}):
        ours = next((m for m in rows if m.pass_number == number and m.server == "ours" and m.load.name == load), None)
        peers = [m for m in rows if m.pass_number == number and m.server in PEER_NAMES and m.load.name == load]
        if ours is None or not peers:
            continue
        best = max(peers, key=lambda m: m.result.rps)
        if best.result.rps == 0:  # no peer completed a request in the measurement (wrk reports 0)
            lines.append(f"- pass {number}, {load}: ours {ours.result.rps:,.0f} req/s; no peer answered within the "
                         "measurement")
            continue
        answered = [m for m in peers if m.result.rps > 0]
        lowest_p99 = min(answered, key=lambda m: m.result.p99_ms)
        lines.append(f"- pass {number}, {load}: ours {ours.result.rps:,.0f} req/s = "
                     f"**{ours.result.rps / best.result.rps:.1f}x** the fastest peer ({best.server}, "
                     f"{best.result.rps:,.0f} req/s); p99 {ours.result.p99_ms:.1f} ms against the best peer p99 "
                     f"{lowest_p99.result.p99_ms:.1f} ms ({lowest_p99.server})")
    return lines


def _proxy_lines(rows: list[Measurement], peers: list[Measurement]) -> list[str]:
    """Proxied against direct, per pass and worker count: share of req/s at c=32, added p50 at c=1,
    the API's CPU per call beside nginx's, and the req/s against the fastest peer called directly."""
    def find(number: int, variant: str | None, route: str, connections: int) -> Measurement | None:
        return next((m for m in rows if (m.pass_number, m.variant, m.route, m.load.connections)
                     == (number, variant, route, connections)), None)

    lines = []
    for m in rows:
        if m.route != "proxied" or m.load.connections != 32:
            continue
        direct = find(m.pass_number, m.variant, "direct", 32)
        if direct is None:
            continue
        text = (f"- pass {m.pass_number}, {m.variant}: through the control plane "
                f"**{m.result.rps / direct.result.rps:.0%}** of the direct requests per second at c=32")
        single = find(m.pass_number, m.variant, "proxied", 1)
        single_direct = find(m.pass_number, m.variant, "direct", 1)
        if single and single_direct:
            text += f"; **{single.result.p50_ms - single_direct.result.p50_ms:+.2f} ms** on the p50 at c=1"
        behind_nginx = find(m.pass_number, m.variant, "nginx", 32)
        if behind_nginx is not None:
            text += f"; nginx in front of it: {behind_nginx.result.rps / direct.result.rps:.0%}"
            if m.hop_cpu_us is not None and behind_nginx.hop_cpu_us is not None:
                text += (f"; CPU per forwarded call: the API **{m.hop_cpu_us:.0f} µs**, nginx "
                         f"{behind_nginx.hop_cpu_us:.0f} µs")
        fastest = max((p for p in peers if p.pass_number == m.pass_number and p.model == m.model
                       and p.server in PEER_NAMES and p.load.name == m.load.name),
                      key=lambda p: p.result.rps, default=None)
        if fastest is not None:
            text += (f"; **{m.result.rps / fastest.result.rps:.1f}x** the fastest peer called directly "
                     f"({fastest.server}, {fastest.result.rps:,.0f} req/s)")
        lines.append(text)
    return lines


def render(context: Context, measurements: list[Measurement]) -> str:
    out = [
        "# Predict path benchmark",
        "",
        "Written by `make bench` (`benchmarks/run.py`); rerun it to refresh every figure below. Figures of one run",
        "compare with each other only: same machine, same models, servers started one at a time, passes in",
        "alternating order.",
        "",
        "To rerun: `make bench` (about ten minutes; `benchmarks/run.py --quick` makes one short pass on the linear",
        "model, `--only ours,kserve,control-plane` picks servers, `--pin` pins servers to CPU 1 and wrk to CPU 0,",
        "`--help` lists the rest). It needs `wrk` (`apt-get install wrk`) and pip access to PyPI: each peer gets its",
        "own virtual environment under benchmarks/.work/venvs, made once with pinned versions.",
        "",
        "## Setup",
        "",
        f"- run: {context.started:%Y-%m-%d %H:%M} to {context.finished:%H:%M} UTC, command `{context.command}`",
        f"- machine: {context.machine['cpu']}, {context.machine['cores']} cores, {context.machine['memory']}, "
        f"{context.machine['os']}",
        f"- load average (1, 5, 15 min) before: {context.load_before}; after: {context.load_after} "
        "(other work on the machine shares its cores)",
        f"- load generator: {context.machine['wrk']}, `wrk -t1 -c32 -d{context.seconds:g}s --latency` for the "
        f"c=32 figures and `-c1 -d{context.latency_seconds:g}s` for the c=1 ones, after a 1 s warm-up each, POSTing "
        "one JSON body (benchmarks/wrk_post.lua)",
        "- CPU pinning: " + ("servers on CPU 1, wrk on CPU 0 (`taskset`)" if context.pinned else
                             "none (the servers, the control plane and wrk share both cores)"),
        "- every server is checked first to answer scikit-learn's own predictions for the benchmark's rows",
        f"- ours: Python {context.machine['python']}, {_our_versions()}",
    ]
    for name in PEER_NAMES:
        if name in context.versions:
            out.append(f"- {name} environment: " + ", ".join(f"{k} {v}" for k, v in
                                                            sorted(context.versions[name].items())))
    out += [
        "",
        "Servers, one worker each: ours is `script/serve.py` (handlers `sklearn_regressor` and",
        "`sklearn_hgb_classifier`, loading `runs:/<id>/model` from MLflow); `mlflow models serve -w 1",
        "--env-manager local` on the same MLflow model (`inputs` body, tensor signature); MLServer with",
        "mlserver-sklearn on the same estimator saved with joblib (V2 `infer`, `parallel_workers: 0`: inference in",
        "the server process); KServe's Python model server with a model class that does what KServe's sklearnserver",
        "does (v1 `predict`, its default flags; it loads the joblib file from local disk, where ours downloads from",
        "MLflow). Start-up is from process start to the first 200 from the readiness route; RSS is the resident",
        "memory of the server's process tree after its measurements.",
        "",
        "What sets ours apart, and where it costs: it predicts through a compiled form that the trainer logged",
        "beside the MLflow model, checked at load time against scikit-learn's answers recorded on probe rows",
        "(`numpy linear`: `x @ coef + intercept` from the model's coefficients; `onnxruntime forest`: the forest",
        "compiled by skl2onnx, run by ONNX Runtime in float32; `treelite trees`: the boosted classifier compiled by",
        "treelite, run by its GTIL; `numpy` for the PyTorch MLP), falling back to scikit-learn when the check fails",
        "or compiling at load time for a model logged without one (`GET /metadata` says which form serves). The",
        "peers call scikit-learn's `predict`, which validates its input on every call and, for a forest, dispatches",
        "the trees through joblib. The request path is a bare ASGI app under uvicorn (httptools, uvloop): orjson in",
        "and out, one numpy conversion of the rows, a Content-Length on every answer. Start-up: a child process",
        "downloads the model with MLflow (its import is most of the time) while the server imports numpy, the",
        "model's runtime and uvicorn; the serving process never imports MLflow, scikit-learn or pandas.",
        "",
    ]
    for key, title in context.models.items():
        rows = [m for m in measurements if m.model == key and m.route is None]
        if not rows:
            continue
        loads = list(dict.fromkeys(m.load.name for m in rows))
        out += [f"## Model servers: {title}", "", *_server_table(rows, loads), ""]
        ratio_lines = [line for load in loads for line in _ratios(rows, load)]
        out += [*ratio_lines, ""] if ratio_lines else []
    proxy = [m for m in measurements if m.route is not None]
    if proxy:
        out += [
            "## The control plane's predict proxy",
            "",
            "`python -m app` on the local runtime with `MLOPS_WORKERS` API workers (its defaults otherwise: log level",
            "info, so the access log is on), a deployment made through the API, and",
            "`POST /api/v1/inference/{task_id}/predict`; against the same model server called on its own port, and",
            "through nginx in front of it (one worker, a keep-alive upstream pool, no access log), in alternating",
            "order. Start-up and RSS are the API's (its workers, without the model server). The processes (wrk, the",
            "API or nginx, the model server) share the two cores, so the faster the model server, the larger the",
            "share of the CPU the proxy's work takes from it. The data plane (`app/dataplane`) is the API's",
            "outermost ASGI application under uvicorn (httptools, uvloop), in front of FastAPI, on public APIs only:",
            "it admits the call from",
            "memory (token, Ready endpoint, body limits), forwards the raw bytes with pyreqwest's pooled client, and",
            "writes one access line per call. Hop CPU is the user and system time of the API's processes (or",
            "nginx's) over the c=32 run, divided by its requests. `MLOPS_LOG_LEVEL=warning` rows: the same without",
            "the access log. What one hop costs in Python with each HTTP client library, against nginx and uvicorn's",
            "own floor: docs/benchmarks-proxy-clients.md (`python -m benchmarks.proxy_clients`).",
            "",
            "The p99 at c=32 through the control plane is the two cores' doing, not the hop's: at that rate the API,",
            'the model server and wrk want more CPU than there is, and a process that waits for a core holds its',
            'requests meanwhile (`/proc/<pid>/schedstat` showed the API runnable but waiting 161 ms in each second of',
            'such a run). On a cluster the API and the model server have CPUs of their own.',
            "",
            "MLOPS_* variables set for the API beyond the harness's own: "
            + (", ".join(f"`{k}={v}`" for k, v in sorted(context.api_environment.items())) or "none") + ".",
            "",
        ]
        for key, title in context.models.items():
            rows = [m for m in proxy if m.model == key]
            if not rows:
                continue
            loads = list(dict.fromkeys(m.load.name for m in rows))
            peers = [m for m in measurements if m.model == key and m.route is None]
            out += [f"### {title}", "", *_server_table(rows, loads), "", *_proxy_lines(rows, peers), ""]
    if SCALE_REPORT.exists():  # the control plane at scale: its own benchmark, its own run
        out += [SCALE_REPORT.read_text().strip(), ""]
    return "\n".join(out)
