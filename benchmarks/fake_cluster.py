"""A stand-in cluster for benchmarks/control_plane_scale.py: the HTTP fake of the Kubernetes API
(tests/fake_kube) in a process of its own, with a loop that plays the Job and Deployment controllers
and the kubelet. Each new Job gets a running pod, then succeeds (one in ten fails) a moment later;
each new Deployment gets a ready pod and becomes available. A second port answers `GET /calls` with
the Kubernetes API calls served so far, by verb and resource (the fake's own recorder).

    python -m benchmarks.fake_cluster --kubeconfig PATH --calls-port PORT
"""

import argparse
import json
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.fake_kube import FakeKube

NAMESPACE = "mlops-bench"
RUN_SECONDS = 1.0  # how long a training pod runs
FAILING_EVERY = 10


def write_kubeconfig(path: Path, fake: FakeKube) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": fake.url}}],
        "users": [{"name": "bench", "user": {"token": "bench-token"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench", "namespace": NAMESPACE}}],
    }))


def play_controllers(fake: FakeKube, stop: threading.Event) -> None:
    started: dict[str, float] = {}
    done: set[str] = set()
    available: set[str] = set()
    count = 0
    while not stop.wait(0.2):
        for name in fake.names("jobs"):
            if name in done:
                continue
            if name not in started:
                fake.start_job(name)
                started[name] = time.monotonic()
            elif time.monotonic() - started[name] > RUN_SECONDS:
                count += 1
                if count % FAILING_EVERY:
                    fake.complete_job(name)
                else:
                    fake.fail_job(name, termination_message="ValueError: the dataset has no column 'price'")
                done.add(name)
        for name in fake.names("deployments"):
            if name not in available:
                fake.make_deployment_available(name)
                available.add(name)


def serve_calls(fake: FakeKube, port: int) -> ThreadingHTTPServer:
    class Calls(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            counts: Counter[str] = Counter(f"{call.verb} {call.resource}" for call in list(fake.calls))
            body = json.dumps(dict(counts)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Calls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--calls-port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeKube(namespace=NAMESPACE) as fake:
        write_kubeconfig(args.kubeconfig, fake)
        calls = serve_calls(fake, args.calls_port)
        try:
            play_controllers(fake, stop)
        finally:
            calls.shutdown()


if __name__ == "__main__":
    main()
