"""llm_chat: where a language model's weights come from, and a small transformers engine for CPUs.

A model is a Hugging Face directory that vLLM and transformers both read. It comes from:
- an MLflow run: its `model` (an MLflow transformers model, e.g. logged by our LoRA trainer, or any
  `mlflow.transformers` model), or else its `adapter` applied to the run's `baseModel` and merged;
- a reference the profile allows: a directory (on the model volume), or a hub name, fetched into
  HF_HOME on the cache volume so a restart does not download it again.
"""

import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


class TokenStreamer:
    """A transformers streamer that hands on text token by token: the decoded text grows with each
    new token and the difference goes out at once, except a piece ending in an unfinished UTF-8
    character, which waits for the next token. (transformers' TextIteratorStreamer waits for
    whole words.)"""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.token_ids: list[int] = []
        self.sent = 0
        self.skipped_prompt = False

    def put(self, value: Any) -> None:
        if not self.skipped_prompt:  # generate() hands the prompt first
            self.skipped_prompt = True
            return
        self.token_ids.extend(int(token) for token in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.queue.put(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if len(text) > self.sent:
            self.queue.put(text[self.sent:])
        self.queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (piece := self.queue.get()) is not None:
            yield piece


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class TransformersEngine:
    """Greedy or sampled generation with transformers, one request at a time (a CPU has no room
    for more); streaming yields text pieces as the tokens come."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
        self.device = device
        self.lock = threading.Lock()

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def _inputs(self, prompt: str) -> Any:
        return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)

    def _generate_kwargs(self, max_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": self.tokenizer.pad_token_id
                                  if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id}
        if temperature > 0:
            kwargs |= {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            kwargs |= {"do_sample": False}
        return kwargs

    def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0) -> Generation:
        inputs = self._inputs(prompt)
        with self.lock, self.torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(max_tokens, temperature, top_p))
        new_tokens = output[0][inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        finish = "length" if len(new_tokens) >= max_tokens else "stop"
        return Generation(text, int(inputs["input_ids"].shape[1]), len(new_tokens), finish)

    def stream(self, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0
               ) -> Iterator[str | Generation]:
        """Text pieces as they are generated (about one per token), then the Generation summary last."""
        inputs = self._inputs(prompt)
        streamer = TokenStreamer(self.tokenizer)
        counted: dict[str, int] = {}
        failures: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock, self.torch.inference_mode():
                    output = self.model.generate(**inputs, streamer=streamer,
                                                 **self._generate_kwargs(max_tokens, temperature, top_p))
                counted["new"] = int(output.shape[1] - inputs["input_ids"].shape[1])
            except BaseException as exc:  # handed to the reader: a failed generation is no short answer
                failures.append(exc)
            finally:
                streamer.queue.put(None)  # never leave the reader waiting

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                yield piece
        worker.join()
        if failures:
            raise failures[0]
        new = counted.get("new", 0)
        yield Generation("".join(pieces), int(inputs["input_ids"].shape[1]), new,
                         "length" if new >= max_tokens else "stop")


class ChatModelHandler:
    """Registered as `llm_chat`. It trains nothing; script/serve.py sees `serves_openai` and runs
    the OpenAI-compatible server (vLLM where it can run, else `load_engine`'s CPU engine)."""

    serves_openai = True

    def load_engine(self, spec: ServeSpec, device: str) -> TransformersEngine:
        return TransformersEngine(resolve_model_dir(spec), device)


def now() -> int:
    return int(time.time())
