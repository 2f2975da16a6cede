"""Runs the platform's shell scripts against recording stand-ins (fake_cli.py) of kubectl,
docker, k3s and sudo, on a PATH that holds those stand-ins and a few system tools only, so that
no real cluster, Docker engine or k3s is ever touched and every call can be checked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_CLI = Path(__file__).resolve().parent / "fake_cli.py"
FAKE_TOOLS = ("kubectl", "docker", "k3s", "sudo")
# Everything else the scripts may run. A script that needs a tool not listed here fails in the
# tests, which keeps their dependencies small and known.
SYSTEM_TOOLS = (
    "bash", "env", "dirname", "mktemp", "rm", "cp", "mkdir", "od", "tr", "cat", "sed", "date",
    "sleep", "awk", "tail",
)


def real_kubectl() -> str:
    """The installed kubectl, which renders kustomize offline (the stand-in delegates to it)."""
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is needed to render kubernetes/ with kustomize (apt-get install kubectl)")
    return path


@dataclass
class Call:
    tool: str
    argv: list[str]
    stdin: str | None
    rc: int
    overlay: str | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    rendered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def line(self) -> str:
        return " ".join([self.tool, *self.argv])

    def option(self, name: str) -> str | None:
        """The value of --name VALUE or --name=VALUE."""
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None


class FakeCluster:
    """One fake cluster (its state lives in `directory`) that scripts can be run against."""

    def __init__(self, directory: Path, tools: tuple[str, ...] = FAKE_TOOLS) -> None:
        self.directory = directory
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        for tool in tools:
            wrapper = self.bin / tool
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLI}" {tool} "$@"\n')
            wrapper.chmod(0o755)
        for tool in SYSTEM_TOOLS:
            found = shutil.which(tool)
            if found is None:
                raise RuntimeError(f"system tool {tool} not found")
            (self.bin / tool).symlink_to(found)
        self.real_kubectl = real_kubectl()

    def run(self, script: str, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": str(self.bin),
            "HOME": str(self.directory),
            "TMPDIR": str(self.directory),
            "LC_ALL": "C",
            "FAKE_CLUSTER_DIR": str(self.directory),
            "FAKE_REAL_KUBECTL": self.real_kubectl,
            **(env or {}),
        }
        return subprocess.run(
            [str(REPO_ROOT / script), *args], cwd=self.directory, env=environment, text=True,
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, timeout=timeout,
        )

    def copy_state_from(self, other: FakeCluster) -> None:
        """Start from another fake cluster's objects and call log (a deploy done once, reused)."""
        for name in ("state.json", "calls.jsonl"):
            if (other.directory / name).exists():
                shutil.copyfile(other.directory / name, self.directory / name)

    def calls(self) -> list[Call]:
        path = self.directory / "calls.jsonl"
        if not path.exists():
            return []
        return [Call(**json.loads(line)) for line in path.read_text().splitlines()]

    def state(self) -> dict[str, Any]:
        path = self.directory / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def objects(self, namespace: str) -> dict[str, dict[str, Any]]:
        """The objects of one namespace, by "kind/name"."""
        prefix = namespace + "/"
        return {key[len(prefix):]: doc for key, doc in self.state().get("objects", {}).items()
                if key.startswith(prefix)}

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        state = self.state()
        state.setdefault("namespaces", {})[name] = labels or {}
        (self.directory / "state.json").write_text(json.dumps(state))

    def add_object(self, namespace: str, kind: str, name: str, labels: dict[str, str]) -> None:
        """An object made by someone else than the scripts (the API, a user)."""
        state = self.state()
        state.setdefault("objects", {})[f"{namespace}/{kind}/{name}"] = {
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        (self.directory / "state.json").write_text(json.dumps(state))


def secret_data(call: Call) -> tuple[dict[str, Any], dict[str, str]]:
    """The metadata and the values of a Secret a `kubectl create -f -` call read from stdin."""
    doc = yaml.safe_load(call.stdin or "")
    return doc["metadata"], {key: str(value) for key, value in doc["stringData"].items()}
