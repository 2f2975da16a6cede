"""kubernetes/ as deploy_all_k3s.sh would apply it (its --render, offline), and small lookups in
the rendered objects, shared by the platform's asset tests."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from typing import Any

import yaml

from tests.platform_support.contract import DEFAULT_REGISTRY
from tests.platform_support.fake_cluster import REPO_ROOT


@functools.cache
def render_overlay(namespace: str, *options: str) -> list[dict[str, Any]]:
    """What deploy_all_k3s.sh applies to `namespace` (its --render prints it)."""
    done = subprocess.run(
        [str(REPO_ROOT / "deploy_all_k3s.sh"), "--render", *options, namespace], capture_output=True, text=True,
        env={**os.environ, "MLOPS_IMAGE_LOAD": "k3s", "MLOPS_REGISTRY": DEFAULT_REGISTRY}, check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_observability(namespace: str) -> list[dict[str, Any]]:
    """deploy_all_k3s.sh --with-observability: the platform and the component in `namespace`, the
    cluster-scoped RBAC of its Prometheus, and kubernetes/gpu-metrics in its own namespace."""
    return render_overlay(namespace, "--with-observability")


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of that kind and name (a generated ConfigMap: with its hash suffix)."""
    matches = [d for d in docs if d["kind"] == kind and (d["metadata"]["name"] == name
               or (kind == "ConfigMap" and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", d["metadata"]["name"])))]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


def mounted_file(docs: list[dict[str, Any]], template: dict[str, Any], container: dict[str, Any],
                 path: str) -> tuple[dict[str, Any], str]:
    """The volume source that provides the file at `path` in the container, and the file's name in
    it: (the ConfigMap or Secret object or volume, key)."""
    mount = max((m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")),
                key=lambda m: len(m["mountPath"]), default=None)
    assert mount is not None, f"nothing is mounted where {path} is"
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    if "configMap" in volume:
        return find(docs, "ConfigMap", volume["configMap"]["name"]), key
    return volume, key
