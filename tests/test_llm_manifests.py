"""The vLLM pod and the LoRA Job, as a cluster would receive them: arguments, GPUs, shared memory,
the weight cache, probes, and strict validity."""

import json
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml

from app.core.deployments import DeploymentService
from app.core.manifests import ClusterRefs
from app.core.training import TrainingService
from app.profiles import ProfileError, load_profiles
from app.schemas.inference import DeployRequest
from app.schemas.training import TrainRequest
from app.settings import PROJECT_ROOT

PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
CLUSTER = SimpleNamespace(allows_local_paths=False)


def deploy(use_gpu: bool, profiles=PROFILES, **source) -> tuple[dict, dict]:
    service = DeploymentService(CLUSTER, profiles, tracking=None, refs=ClusterRefs())  # type: ignore[arg-type]
    source = source or {"mlflowRunId": "ab" * 16}
    request = DeployRequest.model_validate({"taskId": "chat-1", "modelId": "qwen-chat", "modelProfile": "llm_chat",
                                            "useGpu": use_gpu, **source})
    _, (deployment, svc) = service.plan(request)
    for obj in (deployment, svc):
        kubernetes_validate.validate(obj, "1.34.0", strict=True)
    return deployment, svc


def pod(deployment: dict) -> tuple[dict, dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_vllm_pod_carries_the_profiles_vllm_arguments_gpus_shm_and_cache() -> None:
    deployment, _ = deploy(use_gpu=True)
    spec, container = pod(deployment)
    assert container["command"] == ["python", "script/serve.py"]
    args = container["args"]
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--dtype") + 1] == "auto"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["runtimeClassName"] == "nvidia"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "mlops-model-cache"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm" and mounts["model-cache"] == "/models"
    assert args[args.index("--override-generation-config") + 1] == '{"max_new_tokens": 256}'
    assert "--kv-cache-memory-bytes" not in args  # a GPU's memory is sized by the utilization
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"].startswith("/models/")
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    serve_spec = json.loads(env["MLOPS_SERVE_SPEC"])
    assert serve_spec["model_uri"] == f"runs:/{'ab' * 16}/model" and serve_spec["use_gpu"] is True
    assert serve_spec["served_model_name"] == "qwen-chat"
    assert deployment["metadata"]["annotations"]["mlops.dev/served-model-name"] == "qwen-chat"


def test_cpu_and_gpu_pods_run_the_same_arguments_but_for_how_memory_is_sized() -> None:
    gpu_args = pod(deploy(use_gpu=True)[0])[1]["args"]
    cpu_args = pod(deploy(use_gpu=False)[0])[1]["args"]
    assert cpu_args[cpu_args.index("--kv-cache-memory-bytes") + 1] == str(4 * 1024**3)  # the profile's 4GiB
    assert "--gpu-memory-utilization" not in cpu_args

    def common(args: list[str]) -> list[str]:
        for flag in ("--kv-cache-memory-bytes", "--gpu-memory-utilization"):
            if flag in args:
                at = args.index(flag)
                args = args[:at] + args[at + 2:]
        return args

    assert common(cpu_args) == common(gpu_args)


def test_pods_without_a_gpu_run_the_image_with_vllms_cpu_build() -> None:
    inference = PROFILES["llm_chat"].inference
    assert pod(deploy(use_gpu=True)[0])[1]["image"] == inference.image
    assert pod(deploy(use_gpu=False)[0])[1]["image"] == inference.cpu_image != inference.image


def test_hf_token_comes_from_the_profiles_secret_by_reference_never_inline() -> None:
    for use_gpu in (True, False):
        _, container = pod(deploy(use_gpu=use_gpu)[0])
        (token,) = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
        assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "mlops-hf-token", "key": "HF_TOKEN", "optional": True}}}
    llm = PROFILES["llm_chat"].llm
    profiles = {**PROFILES, "llm_chat": PROFILES["llm_chat"].model_copy(
        update={"llm": llm.model_copy(update={"hf_token_secret": None})})}
    _, container = pod(deploy(use_gpu=False, profiles=profiles)[0])
    assert "HF_TOKEN" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize(("change", "expected"), [
    ({"cpu_kv_cache_memory": "32GiB"}, "llm.vllm.cpu_kv_cache_memory (32.0GiB) must be less than "
                                       "inference.resources.limits.memory (32Gi)"),
    ({"cpu_kv_cache_memory": "lots"}, "cpu_kv_cache_memory: could not parse value and unit from byte string"),
    ({"extra_args": ["--enable-prefix-caching", "--port=9000"]}, "--port is set from the deployment itself"),
    ({"extra_args": ["--served-model-name", "x"]}, "--served-model-name is set from the deployment itself"),
])
def test_vllm_settings_that_cannot_work_stop_the_profiles_file(tmp_path, change: dict, expected: str) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "model_profiles.yaml").read_text())
    raw["profiles"]["llm_chat"]["llm"]["vllm"].update(change)
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=r"profiles\.llm_chat") as refused:
        load_profiles(path)
    assert expected in str(refused.value)


def test_readiness_waits_for_the_weights_and_startup_allows_a_long_download() -> None:
    _, container = pod(deploy(use_gpu=True)[0])
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"  # vLLM answers once loaded
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_gpu_count_follows_the_tensor_parallel_size() -> None:
    llm = PROFILES["llm_chat"].llm
    wide = llm.model_copy(update={"vllm": llm.vllm.model_copy(update={"tensor_parallel_size": 4})})
    profiles = {**PROFILES, "llm_chat": PROFILES["llm_chat"].model_copy(update={"llm": wide})}
    _, container = pod(deploy(use_gpu=True, profiles=profiles)[0])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "4"


def test_without_gpu_no_gpu_settings_but_the_same_routes_and_cache() -> None:
    spec, container = pod(deploy(use_gpu=False, modelReference="/models/qwen2.5-0.5b")[0])
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "runtimeClassName" not in spec and "tolerations" not in spec
    assert json.loads(next(e["value"] for e in container["env"] if e["name"] == "MLOPS_SERVE_SPEC"))[
        "model_reference"] == "/models/qwen2.5-0.5b"


def test_lora_job_mounts_the_cache_asks_for_a_gpu_and_passes_the_base_model_as_data() -> None:
    service = TrainingService(CLUSTER, PROFILES, tracking=None, refs=ClusterRefs())  # type: ignore[arg-type]
    request = TrainRequest.model_validate({
        "taskId": "lora-1", "experimentName": "chat", "modelProfile": "llm_lora", "customModelName": "chatLora",
        "initialModelFilePath": "Qwen/Qwen2.5-0.5B", "datasetPath": "s3://datasets/chat.jsonl", "useGpu": True,
        "hyperparameters": {"loraRank": 16, "numEpoch": 2}})
    _, (job,) = service.plan(request)
    kubernetes_validate.validate(job, "1.34.0", strict=True)
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["python", "script/train.py"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {v["name"] for v in spec["volumes"]} == {"tmp", "model-cache"}  # no shm for training
    train_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "MLOPS_TRAIN_SPEC"))
    assert train_spec["initial_model_uri"] == "Qwen/Qwen2.5-0.5B"
    assert train_spec["hyperparameters"]["loraRank"] == 16 and train_spec["handler"] == "llm_lora"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mlops-hf-token", "key": "HF_TOKEN",
                                                               "optional": True}}} in container["env"]
    assert job["spec"]["activeDeadlineSeconds"] == PROFILES["llm_lora"].trainer.active_deadline_seconds
