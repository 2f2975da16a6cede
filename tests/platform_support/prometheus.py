"""Debian's Prometheus for the observability tests: promtool (rule, configuration and expression
checks) and a real Prometheus server started on a free port. The Makefile unpacks both into
.tools/ (tests/platform_support/fetch_prometheus.sh); a prometheus already on PATH works too."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.platform_support.fake_cluster import REPO_ROOT

TOOLS = REPO_ROOT / ".tools" / "usr" / "bin"
OBSERVABILITY = REPO_ROOT / "kubernetes" / "observability"
PROMETHEUS_DIR = OBSERVABILITY / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "recording-rules.yaml", PROMETHEUS_DIR / "alert-rules.yaml")


def binary(name: str) -> str:
    """The path of prometheus or promtool; the test is skipped, saying why, when neither place has it."""
    local = TOOLS / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: `make test` unpacks Debian's prometheus package into .tools/ "
                    "(tests/platform_support/fetch_prometheus.sh needs apt-get)")
    return found


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def check_expressions(expressions: dict[str, str], directory: Path) -> subprocess.CompletedProcess[str]:
    """Parses every PromQL expression with Prometheus' own parser: each becomes a recording rule of
    a rule file that `promtool check rules` reads (it parses, it does not evaluate)."""
    rules = [{"record": f"check:expression_{i}", "expr": expr} for i, expr in enumerate(expressions.values())]
    path = directory / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}, sort_keys=False))
    return promtool("check", "rules", str(path))


class PrometheusServer:
    """A real Prometheus with a given configuration, on a free port of 127.0.0.1."""

    def __init__(self, config: dict[str, Any], directory: Path, port: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text()[-3000:]
                raise AssertionError(f"prometheus exited {self.process.returncode}: {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after 60 s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def api(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]


@contextlib.contextmanager
def running(config: dict[str, Any], directory: Path, port: int) -> Iterator[PrometheusServer]:
    server = PrometheusServer(config, directory, port).start()
    try:
        yield server
    finally:
        server.stop()


def sanitized(key: str) -> str:
    """A label or annotation key as Kubernetes discovery writes it into a label name."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def pod_target_group(template: dict[str, Any], namespace: str, pod: str, annotations: dict[str, str],
                     ) -> dict[str, Any]:
    """The target Prometheus' Kubernetes pod discovery makes of a running pod of `template` (its
    first container's first port), at 127.0.0.1 for a process of this machine: for file_sd, so
    that the configuration's relabelling runs on what a cluster would give it. `annotations`
    replace the template's where the process differs from the pod (its port)."""
    container = template["spec"]["containers"][0]
    port = container["ports"][0]
    labels = {
        "__address__": f"127.0.0.1:{port['containerPort']}",
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
    }
    for key, value in template["metadata"].get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
        labels[f"__meta_kubernetes_pod_labelpresent_{sanitized(key)}"] = "true"
    for key, value in {**template["metadata"].get("annotations", {}), **annotations}.items():
        labels[f"__meta_kubernetes_pod_annotation_{sanitized(key)}"] = value
        labels[f"__meta_kubernetes_pod_annotationpresent_{sanitized(key)}"] = "true"
    return {"targets": [labels.pop("__address__")], "labels": labels}
