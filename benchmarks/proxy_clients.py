"""What one proxy hop costs in Python, by HTTP client library, against nginx: the evidence behind
the data plane's choice of client (app/dataplane/upstream.py) and its distance from nginx.

Every proxy forwards the same POST to the same upstream (nginx answering a constant, so the
upstream costs almost nothing and the hop is what is measured): nginx itself in front of it (the
floor of one hop), then benchmarks/bare_proxy.py under uvicorn with each client, and uvicorn
answering the constant itself (the server's own floor, no client). CPU is the proxy process's user
and system time per request. Two passes in alternating order.

    .venv/bin/python -m benchmarks.proxy_clients [--seconds 6] [--output docs/benchmarks-proxy-clients.md]

The clients live in a virtual environment of their own (benchmarks/.work/venvs/clients, made once
with pinned versions), not in the project's.
"""

import argparse
import os
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import environments
from benchmarks.load import require_wrk, run_wrk
from benchmarks.nginx import nginx_server, proxy_servers
from benchmarks.processes import Server, free_port

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work" / "proxy-clients"
CLIENTS = ("constant", "pyreqwest", "aiohttp", "httpx", "aiosonic", "blacksheep")
BODY = b'{"userId": "bench", "data": {"features": [[0.5, 1.5, -0.3, 2.0, 0.1, 0.7, -1.2, 0.4]]}}'

CONSTANT_SERVER = """server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{{"predictions":[1.0]}}'; }} }}"""


def measure(server: Server, url: str, body: Path, seconds: float, figures: dict[str, float] | None = None) -> list[str]:
    """The table's cells for one proxy; `figures` gets c=32 req/s and CPU, c=1 p50."""
    cells = []
    for connections, duration in ((32, seconds), (1, seconds / 2)):
        run_wrk(url, body, connections, 1)  # warm-up
        before = server.cpu_seconds()
        result = run_wrk(url, body, connections, duration)
        cpu_us = (server.cpu_seconds() - before) * 1e6 / max(result.requests, 1)
        if figures is not None:
            figures[f"rps{connections}"], figures[f"cpu{connections}"] = result.rps, cpu_us
            figures[f"p50_{connections}"] = result.p50_ms
        cells += [f"{result.rps:,.0f}", f"{result.p50_ms:.2f}", f"{result.p99_ms:.1f}", f"{cpu_us:.0f}"]
        if result.errors:
            cells[-4] += f" ({result.errors} errors)"
    return cells


def summary(figures: dict[tuple[int, str], dict[str, float]], passes: int) -> list[str]:
    """Per pass and client: its CPU per forwarded call against nginx's, and what it adds to the p50
    at c=1 over calling the upstream directly."""
    lines = []
    for number in range(1, passes + 1):
        nginx_cpu = figures[(number, "nginx")]["cpu32"]
        direct_p50 = figures[(number, "direct")]["p50_1"]
        parts = []
        for name in ("nginx", *CLIENTS[1:]):
            found = figures[(number, name)]
            parts.append(f"{name} {found['cpu32']:.0f} µs ({found['cpu32'] / nginx_cpu:.1f}x), "
                         f"+{found['p50_1'] - direct_p50:.2f} ms")
        lines.append(f"- pass {number}: CPU per forwarded call at c=32 (x nginx's) and p50 added at c=1: "
                     + "; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each c=32 run (c=1: half)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT.parent / "docs" / "benchmarks-proxy-clients.md")
    args = parser.parse_args(argv)
    require_wrk()
    if shutil.which("nginx") is None:
        print("error: nginx is not installed: `apt-get install nginx-light`", file=sys.stderr)
        return 2
    env = environments.ensure("clients", ROOT / ".work" / "venvs")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    body = WORK / "body.json"
    body.write_bytes(BODY)
    started = datetime.now(UTC)
    upstream_port = free_port()
    upstream = nginx_server("upstream", CONSTANT_SERVER.format(port=upstream_port), WORK / "upstream",
                            f"http://127.0.0.1:{upstream_port}/")
    upstream.start()
    rows = []
    figures: dict[tuple[int, str], dict[str, float]] = {}
    try:
        for number in range(1, args.passes + 1):
            order = ["direct", "nginx", *CLIENTS]
            for name in order if number % 2 else reversed(order):
                port = free_port()
                if name == "direct":
                    cells = measure(upstream, f"http://127.0.0.1:{upstream_port}/predict", body, args.seconds,
                                    figures.setdefault((number, name), {}))
                    print(f"pass {number} the upstream directly: {' | '.join(cells)}", flush=True)
                    rows.append(f"| the upstream directly (no hop) | {number} | " + " | ".join(cells) + " |")
                    continue
                if name == "nginx":
                    server = nginx_server("front", proxy_servers(f"127.0.0.1:{upstream_port}", port), WORK / "front",
                                          f"http://127.0.0.1:{port}/health")
                else:
                    server = Server(name, [env.python, str(ROOT / "bare_proxy.py")], f"http://127.0.0.1:{port}/health",
                                    {"BARE_PORT": str(port), "BARE_CLIENT": name,
                                     "BARE_UPSTREAM": f"http://127.0.0.1:{upstream_port}/predict"},
                                    log_path=WORK / f"{name}.log")
                server.start()
                try:
                    cells = measure(server, f"http://127.0.0.1:{port}/predict", body, args.seconds,
                                    figures.setdefault((number, name), {}))
                finally:
                    server.stop()
                label = "nginx (proxy_pass, keep-alive pool)" if name == "nginx" else (
                    "uvicorn answering itself (no client)" if name == "constant" else f"uvicorn + {name}")
                print(f"pass {number} {label}: {' | '.join(cells)}", flush=True)
                rows.append(f"| {label} | {number} | " + " | ".join(cells) + " |")
    finally:
        upstream.stop()
    versions = env.versions()
    text = "\n".join([
        "# One proxy hop in Python, by HTTP client library",
        "",
        f"Written by `python -m benchmarks.proxy_clients` ({started:%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores shared by wrk, the proxy and the upstream). The upstream is nginx "
        "answering a constant; each proxy forwards the same one-row POST to it. `µs CPU` is the proxy's user and "
        "system time per request. wrk -t1, c=32 and c=1, after a 1 s warm-up.",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())),
        "",
        "| proxy | pass | c=32 req/s | c=32 p50 ms | c=32 p99 ms | c=32 µs CPU | c=1 req/s | c=1 p50 ms | c=1 p99 ms "
        "| c=1 µs CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *summary(figures, args.passes),
        "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
