"""llm_chat: where a language model's weights come from, for vLLM to serve them.

A model is a Hugging Face directory that vLLM reads. It comes from:
- an MLflow run: its `model` (an MLflow transformers model, e.g. logged by our LoRA trainer, or any
  `mlflow.transformers` model), or else its `adapter` applied to the run's `baseModel` and merged;
- a reference the profile allows: a directory (on the model volume), or a hub name, fetched into
  HF_HOME on the cache volume so a restart does not download it again.
"""

import os
import shutil
from pathlib import Path
from typing import Any

from models.spec import ServeSpec


def cache_root(spec: ServeSpec) -> Path:
    root = Path(os.environ.get("MLOPS_MODEL_CACHE") or spec.model_cache_dir or "/tmp/mlops-models")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only or absent volume locally: use a private temporary place
        root = Path("/tmp/mlops-models")
        root.mkdir(parents=True, exist_ok=True)
    return root


def resolve_model_dir(spec: ServeSpec) -> Path:
    """A local Hugging Face directory with the model's weights and tokenizer."""
    if spec.model_reference is not None:
        local = Path(spec.model_reference).expanduser()
        if local.is_dir():
            return local
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.model_reference))
    assert spec.model_uri is not None
    run_id = spec.model_uri.split("/")[1]
    target = cache_root(spec) / "mlflow-runs" / run_id
    if (target / "config.json").exists():
        return target  # downloaded and converted before this restart
    staging = target.with_name(run_id + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model, tokenizer = _load_run_model(run_id)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _load_run_model(run_id: str) -> tuple[Any, Any]:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    artifacts = {info.path for info in client.list_artifacts(run_id)}
    try:
        components = mlflow.transformers.load_model(f"runs:/{run_id}/model", return_type="components")
        return components["model"], components["tokenizer"]
    except Exception as exc:
        if "adapter" not in artifacts:
            raise ValueError(f"run {run_id} has neither a transformers model nor a LoRA adapter: {exc}") from exc
    # Only an adapter: apply it to the base model the run was trained from, and merge.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = client.get_run(run_id).data.params.get("baseModel")
    if not base:
        raise ValueError(f"run {run_id} logged an adapter but no baseModel param")
    adapter_dir = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).merge_and_unload()
    return model, AutoTokenizer.from_pretrained(adapter_dir)


class ChatModelHandler:
    """Registered as `llm_chat`. It trains nothing; script/serve.py sees `serves_openai` and hands
    over to script/llm_server.py, which runs vLLM's OpenAI-compatible server on `resolve_model_dir`."""

    serves_openai = True
