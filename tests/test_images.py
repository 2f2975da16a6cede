"""The four images, built and started for real: `make images-test` (docker/dev/images_test.sh builds
them, then runs this file with MLOPS_IMAGES_TEST=1; `make test` skips it).

The API image runs the Kubernetes runtime against the HTTP fake of the Kubernetes API; the test
plays the kubelet with the images themselves: the Job's container is the trainer image, run with
the Job's own command and environment, and trains against a real MLflow server; the Deployment's
container is the inference image, serving that run, and predicts go through the API image.
Containers share the host's network, to reach the MLflow server and the fake on the loopback.
"""

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, TRAIN_SPEC_ENV, TrainSpec
from tests.fake_kube import FakeKube
from tests.support import free_port, regression_csv, wait_until

pytestmark = pytest.mark.skipif(
    os.environ.get("MLOPS_IMAGES_TEST") != "1", reason="builds and runs the container images: make images-test"
)

TOOL = os.environ.get("MLOPS_CONTAINER_TOOL") or "podman"
REGISTRY = os.environ.get("MLOPS_REGISTRY") or "localhost:5002"
API, BASE, TRAINER, INFERENCE = (f"{REGISTRY}/{name}:latest" for name in (
    "fastapi-mlops-api", "mlops-gpu-base", "mlflow-trainer", "mlflow-inference"))
ADMIN_TOKEN = secrets.token_hex(16)
PREDICT_BODY = {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4, 0.2, 4.9, 3.0, 1.4, 0.2]]}}
# What the pods' security context asks of every container (app/core/manifests.py, kubernetes/).
RESTRICTED = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
# The pods' /tmp, an emptyDir: writable, and executable (compiled kernels are loaded from it).
EMPTY_DIR_TMP = ["--tmpfs", "/tmp:rw,exec,mode=1777"]


def engine(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=timeout)


def own_lines(stderr: str) -> list[str]:
    """The container's stderr without the engine's own log lines (podman logs `time="..." level=...`)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("time=")]


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of containers started detached; removed (with their output shown on failure) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        logs = engine("logs", name)
        print(f"--- {name}\n{logs.stdout}{logs.stderr}")
        engine("rm", "--force", name)


def start(names: list[str], image: str, options: list[str], args: list[str], env: dict[str, str], name: str) -> str:
    name = f"mlops-images-test-{name}-{secrets.token_hex(3)}"
    environment = [f"--env={key}={value}" for key, value in env.items()]
    done = engine("run", "--detach", "--name", name, "--network", "host", *RESTRICTED, *environment, *options, image,
                  *args)
    assert done.returncode == 0, done.stderr
    names.append(name)
    return name


def healthy(container: str) -> bool:
    """The image's own HEALTHCHECK, run now (podman runs it on demand; Docker on its interval)."""
    if TOOL == "podman":
        return engine("healthcheck", "run", container, timeout=60).returncode == 0
    state = engine("inspect", "--format", "{{.State.Health.Status}}", container)
    return state.stdout.strip() == "healthy"


def container_env(workload: dict[str, Any], config_map: dict[str, str]) -> dict[str, str]:
    """The environment a kubelet gives the workload's container: its values and the ConfigMap's keys."""
    env = {}
    for item in workload["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            key = item["valueFrom"]["configMapKeyRef"]["key"]
            if key in config_map:
                env[item["name"]] = config_map[key]
    return env


def command_of(workload: dict[str, Any]) -> list[str]:
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container.get("args", [])]


# ----------------------------------------------------------------------------- environments


def test_every_environment_resolves_without_conflicts() -> None:
    environments = [(API, "python"), (BASE, "python"), (INFERENCE, "python"), (INFERENCE, "/opt/vllm/bin/python")]
    for image, python in environments:
        done = engine("run", "--rm", "--no-healthcheck", "--entrypoint", python, image, "-m", "pip", "check")
        assert done.returncode == 0 and "No broken requirements found" in done.stdout, (image, python, done.stdout)
    base = engine("run", "--rm", "--no-healthcheck", BASE)
    assert base.returncode == 0 and base.stdout.startswith("torch 2.13.0"), base.stdout + base.stderr

    def versions(python: str) -> dict[str, str]:
        script = "import json, importlib.metadata as m; print(json.dumps({d: m.version(d) for d in " \
                 "('fastapi', 'torch', 'transformers', 'vllm') if any(True for _ in m.distributions(name=d))}))"
        done = engine("run", "--rm", "--no-healthcheck", "--entrypoint", python, INFERENCE, "-c", script)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    workloads, vllm = versions("python"), versions("/opt/vllm/bin/python")
    # The workloads keep the development pins; vLLM has the fastapi it asks for, and the workloads' torch.
    assert workloads["fastapi"] == "0.163.2" and "vllm" not in workloads
    assert vllm["vllm"] == "0.32.0" and vllm["fastapi"].startswith("0.136.")
    assert vllm["torch"] == workloads["torch"] and vllm["transformers"] == workloads["transformers"] == "5.19.0"
    where = engine("run", "--rm", "--no-healthcheck", "--entrypoint", "sh", INFERENCE, "-c",
                   'test -x "$MLOPS_VLLM_PYTHON" && "$MLOPS_VLLM_PYTHON" -c "import vllm, sys; print(sys.prefix)"')
    assert where.returncode == 0 and where.stdout.strip() == "/opt/vllm", where.stderr


def test_the_inference_image_compiles_what_vllm_compiles_as_it_starts() -> None:
    """torch.compile (vLLM's default unless a profile sets enforce_eager) builds C++ at run time, and Triton its
    launchers with the C compiler: the inference image has one, usable by its user; the others have none."""
    script = "import torch; f = torch.compile(lambda x: torch.sin(x) * 2 + 1); print(float(f(torch.zeros(3)).sum()))"
    for python in ("python", "/opt/vllm/bin/python"):
        done = engine("run", "--rm", "--no-healthcheck", *RESTRICTED, *EMPTY_DIR_TMP, "--entrypoint", python,
                      INFERENCE, "-c", script, timeout=600)
        assert done.returncode == 0 and done.stdout.strip() == "3.0", done.stderr[-2000:]
    for image in (API, BASE, TRAINER):
        done = engine("run", "--rm", "--no-healthcheck", "--entrypoint", "sh", image, "-c",
                      "command -v cc gcc g++ || true")
        assert done.stdout.strip() == "", (image, done.stdout)


def test_nothing_of_the_build_stages_reaches_a_shipped_image() -> None:
    """Build stages may run on a stand-in that trusts this host's CAs and holds its wheels: never shipped."""
    for image in (API, BASE, TRAINER, INFERENCE):
        done = engine("run", "--rm", "--no-healthcheck", "--entrypoint", "sh", image, "-c",
                      "ls -A /usr/local/share/ca-certificates /opt/wheels 2>/dev/null; env | grep ^PIP_ || true")
        assert done.returncode == 0 and done.stdout.split() in ([], ["/usr/local/share/ca-certificates:"]), (
            image, done.stdout)
        user = engine("run", "--rm", "--no-healthcheck", "--entrypoint", "id", image, "-u")
        assert user.stdout.strip() == "10001", image


def test_the_trainer_and_inference_images_share_the_base_layers() -> None:
    def layers(image: str) -> list[str]:
        return json.loads(engine("image", "inspect", "--format", "{{json .RootFS.Layers}}", image).stdout)

    base = layers(BASE)
    for image in (TRAINER, INFERENCE):
        assert layers(image)[: len(base)] == base, f"{image} does not sit on the base's layers"
    sizes = {image: int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout) for image in (BASE, TRAINER)}
    # The trainer adds its code only: a few hundred KB, not another copy of the packages.
    assert sizes[TRAINER] - sizes[BASE] < 10 * 1024 * 1024, sizes


# ----------------------------------------------------------------------------- the API image alone


def test_the_api_image_without_settings_stops_at_once_with_one_line() -> None:
    done = engine("run", "--rm", "--no-healthcheck", API, timeout=120)
    lines = own_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: the kubernetes runtime cannot start: ")
    for setting in ("MLOPS_MLFLOW_URI", "MLOPS_API_TOKENS", "MLOPS_KUBECONFIG"):
        assert setting in lines[0]
    # The local runtime (no trainer or model server in this image) needs an MLflow server: mlflow-skinny has none.
    done = engine("run", "--rm", "--no-healthcheck", "--env=MLOPS_RUNTIME=local", API, timeout=120)
    lines = own_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "mlflow-skinny" in lines[0] and "MLOPS_MLFLOW_URI" in lines[0] and "port" not in lines[0]


# ----------------------------------------------------------------------------- all of them together


def write_kubeconfig(path: Path, fake: FakeKube, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "api", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "api", "namespace": fake.namespace}}],
    }))
    path.chmod(0o644)  # read by uid 10001 in the container
    return path


def run_trainer_image(fake: FakeKube, job_name: str, dataset: Path, mlflow_uri: str) -> None:
    """The kubelet's part: the Job's container, from the trainer image, with the Job's command and environment."""
    pod = fake.start_job(job_name)
    job = fake.get("jobs", job_name)
    env = container_env(job, {"MLFLOW_TRACKING_URI": mlflow_uri})
    # No S3 server here: the s3:// dataset the Job names is mounted into the container as a file.
    spec = TrainSpec.model_validate_json(env[TRAIN_SPEC_ENV]).model_copy(update={"dataset_path": "/data/train.csv"})
    env[TRAIN_SPEC_ENV] = spec.model_dump_json()
    command = command_of(job)
    done = engine("run", "--rm", "--network", "host", *RESTRICTED, *EMPTY_DIR_TMP,
                  "--volume", f"{dataset}:/data/train.csv:ro", *(f"--env={k}={v}" for k, v in env.items()),
                  "--entrypoint", command[0], TRAINER, *command[1:], timeout=600)
    fake.write_log(pod, done.stdout + "".join(line + "\n" for line in own_lines(done.stderr)))
    assert done.returncode == 0, done.stdout + done.stderr
    fake.complete_job(job_name)


def test_train_deploy_and_predict_through_the_three_images(
    mlflow_uri: str, tmp_path: Path, containers: list[str]
) -> None:
    dataset = regression_csv(tmp_path / "houses.csv")
    dataset.chmod(0o644)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    fake = FakeKube(token="cluster-token").__enter__()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake, "cluster-token")
        port = free_port()
        api_container = start(containers, API, ["--volume", f"{kubeconfig}:/etc/mlops/kubeconfig:ro"], [], env={
            "MLOPS_KUBECONFIG": "/etc/mlops/kubeconfig", "MLOPS_MLFLOW_URI": mlflow_uri,
            "MLOPS_API_TOKENS": f"admin:{ADMIN_TOKEN}", "MLOPS_HOST": "127.0.0.1", "MLOPS_PORT": str(port),
            "MLOPS_WORKERS": "2"}, name="api")
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)

        def readyz() -> int | None:
            try:
                return api.get("/readyz").status_code
            except httpx.TransportError:
                return None

        assert wait_until(readyz, 120, 0.5, "the API container's /readyz") == 200
        assert healthy(api_container)

        created = api.post("/api/v1/train/jobs", json={
            "taskId": "image-train", "experimentName": "images-test", "modelProfile": "tabular_regression",
            "customModelName": "imagesTestHouses", "datasetPath": "s3://datasets/houses.csv",
            "hyperparameters": {"numEpoch": 30, "learningRate": 0.01}})
        assert created.status_code == 201, created.text
        run_trainer_image(fake, "train-image-train", dataset, mlflow_uri)
        status = api.get("/api/v1/train/jobs/image-train/status").json()
        assert status["status"] == "Succeeded" and status["mlflowRunId"], status
        lines = api.get("/api/v1/train/jobs/image-train/logs").text.splitlines()
        assert any(json.loads(line).get("message") == "run finished" for line in lines if line.startswith("{")), lines

        created = api.post("/api/v1/inference/deployments", json={
            "taskId": "image-deploy", "modelId": "image-houses", "mlflowRunId": status["mlflowRunId"],
            "modelProfile": "tabular_regression"})
        assert created.status_code == 201, created.text
        deployment = fake.get("deployments", "infer-image-houses")
        # Not the image's default 8080: its HEALTHCHECK must follow the port the Deployment gives.
        serve_port = free_port()
        env = container_env(deployment, {"MLFLOW_TRACKING_URI": mlflow_uri}) | {
            SERVE_PORT_ENV: str(serve_port), SERVE_HOST_ENV: "127.0.0.1"}
        command = command_of(deployment)
        server = start(containers, INFERENCE, [*EMPTY_DIR_TMP, "--entrypoint", command[0]], command[1:],
                       env=env, name="inference")

        def server_ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{serve_port}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(server_ready, 180, 0.5, "the inference container to load the model")
        assert healthy(server)
        fake.set_backend("infer-image-houses", "127.0.0.1", serve_port)
        fake.make_deployment_available("infer-image-houses")
        wait_until(lambda: api.post("/api/v1/inference/image-deploy/predict", json=PREDICT_BODY).status_code == 200,
                   60, 0.5, "predicts through the API container")
        (prediction,) = api.post("/api/v1/inference/image-deploy/predict", json=PREDICT_BODY).json()["predictions"]
        expected = sum(v * w for v, w in zip(PREDICT_BODY["data"]["features"][0], range(1, 9), strict=True)) + 3
        assert abs(prediction - expected) < 0.2 * abs(expected)
    finally:
        fake.close()
    # The cluster is gone: the API stays alive and healthy, but no longer ready.
    error = wait_until(lambda: api.get("/readyz").json().get("error"), 120, 0.5, "/readyz to answer 503")
    assert error["code"] == "dependency_unavailable" and "cannot be reached" in error["message"], error
    assert api.get("/healthz").status_code == 200 and healthy(api_container)
