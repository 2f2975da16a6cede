"""How the local runtime turns a pod spec into a process: commands, env, and volumes."""

from pathlib import Path
from types import SimpleNamespace

from app.core.deployments import DeploymentService
from app.core.manifests import ClusterRefs
from app.profiles import load_profiles
from app.runtime.local import LocalRuntime
from app.schemas.inference import DeployRequest
from app.settings import PROJECT_ROOT
from tests.support import plan_deployment

PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")


def test_a_claim_becomes_a_shared_directory_and_env_paths_follow_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_API_TOKENS", "admin:must-not-reach-the-workload")
    service = DeploymentService(SimpleNamespace(allows_local_paths=True), PROFILES, tracking=None,  # type: ignore
                                refs=ClusterRefs())
    _, manifests = plan_deployment(service, DeployRequest.model_validate({
        "taskId": "chat", "modelId": "chat", "modelReference": "/models/base", "modelProfile": "llm_chat"}))
    runtime = LocalRuntime(tmp_path / "data", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    process = runtime._process_spec("inference", tmp_path / "task", manifests[0], 40123)
    volume = tmp_path / "data" / "volumes" / "mlops-model-cache"
    assert volume.is_dir()
    assert process["env"]["HF_HOME"] == f"{volume}/huggingface"
    assert process["env"]["MLOPS_MODEL_CACHE"] == str(volume)
    assert process["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"  # from the ConfigMap reference
    assert process["env"]["MLOPS_SERVE_PORT"] == "40123" and process["env"]["MLOPS_SERVE_HOST"] == "127.0.0.1"
    assert "MLOPS_API_TOKENS" not in process["env"]  # the API's own settings stay with the API
    assert process["command"][1:] == ["script/serve.py", *PROFILES["llm_chat"].llm.engine_args(use_gpu=False)]
    assert process["restartPolicy"] == "Always"
