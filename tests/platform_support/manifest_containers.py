"""The containers of kubernetes/base as the manifests declare them, so that a test can start the
same command with the same flags and environment on this machine, changing only what a
cluster provides (addresses, ports, paths of mounted files)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from tests.platform_support.fake_cluster import REPO_ROOT

BASE = REPO_ROOT / "kubernetes" / "base"


def workload_container(file: str, kind: str, name: str) -> dict[str, Any]:
    """The first container of the pod template of the workload KIND/NAME in kubernetes/base/FILE."""
    docs = [doc for doc in yaml.safe_load_all((BASE / file).read_text()) if doc]
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name} in kubernetes/base/{file}: {len(matches)} found"
    return matches[0]["spec"]["template"]["spec"]["containers"][0]


def resolve_env(
    container: dict[str, Any],
    config: Mapping[str, str],
    secrets: Mapping[str, Mapping[str, str]],
    leave_out: Iterable[str] = (),
) -> dict[str, str]:
    """The container's environment with its references filled in: configMapKeyRef keys from
    `config` (the test's own endpoints), secretKeyRef keys from `secrets[secret name]`."""
    skipped = set(leave_out)
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if item["name"] in skipped:
            continue
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            key = source["configMapKeyRef"]["key"]
            assert key in config, f"{item['name']}: the test gives no value for ConfigMap key {key}"
            env[item["name"]] = config[key]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], {}), f"{item['name']}: no test value for {ref}"
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"{item['name']}: unsupported reference {source}")
    return env


def override_flags(args: list[str], overrides: Mapping[str, str]) -> list[str]:
    """Go-style `-flag=value` arguments with the named flags set to new values (appended when the
    manifest does not set them); every other argument is kept as it is, in its place."""
    result: list[str] = []
    seen: set[str] = set()
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in overrides:
            result.append(f"{flag}={overrides[flag]}")
            seen.add(flag)
        else:
            result.append(arg)
    result += [f"{flag}={value}" for flag, value in overrides.items() if flag not in seen]
    return result

