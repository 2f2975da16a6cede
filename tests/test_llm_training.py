"""llm_lora training: the trainer as a Job runs it (script/train.py in a subprocess) on a tiny local
model, what it logs to MLflow for llm_chat, its errors, and one job through the API."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from app.profiles import load_profiles
from app.settings import PROJECT_ROOT
from models.base import TrainingError
from models.spec import TERMINATION_LOG_ENV, TRAIN_SPEC_ENV, TrainSpec
from tests.llm_support import make_tiny_model, write_chat_jsonl, write_prompt_completion_jsonl
from tests.support import regression_csv
from tests.test_e2e_local import wait_for_training

PROFILES = load_profiles(PROJECT_ROOT / "model_profiles.yaml")
# One thread: on a small, busy CI machine a tiny model's steps are 30x slower with two threads
# fighting other processes for the cores.
WORKLOAD_ENV = {"OMP_NUM_THREADS": "1"}
# A rate that moves the tiny random model's loss clearly within a few epochs.
FAST_HYPERPARAMETERS = {"numEpoch": 3, "learningRate": 0.02, "numBatch": 4, "loraDropout": 0.0, "maxSeqLength": 64}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture
def tracking(mlflow_uri: str) -> Iterator[MlflowClient]:
    """The session's MLflow server as the tracking URI of this process too (runs:/ URIs resolve there)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_uri)
    yield MlflowClient(mlflow_uri)
    mlflow.set_tracking_uri(previous)


def train_spec(task_id: str, dataset: Path, base: Path | None, profile: str = "llm_lora", **fields: Any) -> TrainSpec:
    hyperparameters, problems = PROFILES[profile].resolve_hyperparameters(fields.pop("hyperparameters", {}))
    assert not problems, problems
    return TrainSpec(task_id=task_id, experiment_name=f"llm-training-{task_id}", model_profile=profile,
                     handler=PROFILES[profile].handler, dataset_path=str(dataset),
                     initial_model_uri=str(base) if base else None, hyperparameters=hyperparameters, **fields)


def run_trainer(spec: TrainSpec, mlflow_uri: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """script/train.py as a Job's container runs it; its exit, output, and termination message."""
    termination_log = tmp_path / f"{spec.task_id}.termination"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLOPS_")}
    env |= {**WORKLOAD_ENV, TRAIN_SPEC_ENV: spec.model_dump_json(), "MLFLOW_TRACKING_URI": mlflow_uri,
            TERMINATION_LOG_ENV: str(termination_log)}
    done = subprocess.run([sys.executable, "script/train.py"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    return done, termination_log.read_text() if termination_log.exists() else ""


def json_lines(output: str, message: str) -> list[dict[str, Any]]:
    return [record for line in output.splitlines() if line.startswith("{")
            and (record := json.loads(line))["message"] == message]


def run_of(client: MlflowClient, task_id: str) -> str:
    (run,) = client.search_runs([client.get_experiment_by_name(f"llm-training-{task_id}").experiment_id])
    return run.info.run_id


def test_prompt_completion_fine_tune_logs_adapter_merged_model_and_registers_it(
    tiny_model: Path, tracking: MlflowClient, mlflow_uri: str, tmp_path: Path
) -> None:
    dataset = write_prompt_completion_jsonl(tmp_path / "train.jsonl", rows=40)
    spec = train_spec("lora-pc", dataset, tiny_model, custom_model_name="tinyLoraPc",
                      hyperparameters=FAST_HYPERPARAMETERS)
    done, termination = run_trainer(spec, mlflow_uri, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert termination == ""
    run_id = run_of(tracking, "lora-pc")
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED"

    # One loss per optimizer step: 40 rows in batches of 4, three epochs; the step lines say the same.
    losses = tracking.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(1, 31))
    steps = json_lines(done.stdout, "step")
    assert [(s["step"], s["totalSteps"], s["epoch"], s["epochs"]) for s in steps] == [
        (i, 30, (i - 1) // 10 + 1, 3) for i in range(1, 31)]
    by_step = {m.step: m.value for m in losses}
    assert all(abs(by_step[s["step"]] - s["loss"]) < 1e-5 for s in steps)
    # It learns: the last epoch's mean loss is below the first's (same data each epoch, no dropout, so
    # with nothing learnt they would be equal). The tiny model's random output layer, which LoRA leaves
    # alone, bounds how far its loss can fall: 5.66 -> 5.55 over these three epochs.
    first, last = (sum(by_step[s] for s in range(start, start + 10)) / 10 for start in (1, 21))
    assert last < first - 0.05, (first, last)
    epoch_losses = tracking.get_metric_history(run_id, "epoch_loss")
    assert [m.step for m in sorted(epoch_losses, key=lambda m: m.step)] == [1, 2, 3]

    metrics = run.data.metrics  # the latest value of each: where the status reads progress from
    assert (metrics["progress_step"], metrics["progress_total_steps"]) == (30, 30)
    assert (metrics["progress_epoch"], metrics["progress_total_epochs"]) == (3, 3)
    assert sorted(m.value for m in tracking.get_metric_history(run_id, "progress_step")) == list(range(0, 31))

    params = run.data.params
    assert params["baseModel"] == str(tiny_model)
    assert params["quantization"] == "none"  # no GPU here
    assert (params["format"], params["rows"]) == ("prompt_completion", "40")
    assert (params["loraRank"], params["learningRate"], params["mergeAdapter"]) == ("8", "0.02", "True")
    assert (params["totalSteps"], params["device"]) == ("30", "cpu")
    assert "targetColumn" not in params
    assert run.data.tags["mlops.model_profile"] == "llm_lora"

    adapter = {Path(f.path).name for f in tracking.list_artifacts(run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= adapter
    config = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="adapter/adapter_config.json", dst_path=str(tmp_path))).read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == str(tiny_model)

    components = mlflow.transformers.load_model(f"runs:/{run_id}/model", return_type="components")
    model, tokenizer = components["model"], components["tokenizer"]
    assert components["task"] == "text-generation"
    assert str(model.dtype) == "torch.float32"  # the base model's dtype
    prompt = tokenizer("hello", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(output[0]), str)

    (version,) = tracking.search_model_versions("name='tinyLoraPc'")
    assert version.run_id == run_id


def test_malformed_line_fails_the_job_naming_the_line(tiny_model: Path, mlflow_uri: str, tmp_path: Path) -> None:
    dataset = write_prompt_completion_jsonl(tmp_path / "bad.jsonl", rows=3)
    with dataset.open("a") as file:
        file.write('{"prompt": "hello", "completion": " world"\n')  # line 4: not valid JSON
    done, termination = run_trainer(train_spec("lora-bad", dataset, tiny_model), mlflow_uri, tmp_path)
    assert done.returncode == 1
    assert "line 4 is not valid JSON" in termination
    errors = [line for line in done.stdout.splitlines() if '"level":"ERROR"' in line]
    assert json.loads(errors[-1])["message"].startswith(f"error: dataset {dataset} line 4 is not valid JSON")
    assert "Traceback" not in done.stdout  # a user's error, said plainly


def test_tabular_mlp_logs_progress_per_epoch(tracking: MlflowClient, mlflow_uri: str, tmp_path: Path) -> None:
    csv = regression_csv(tmp_path / "houses.csv", rows=50)
    spec = train_spec("mlp-progress", csv, None, profile="tabular_regression",
                      hyperparameters={"numEpoch": 3, "numBatch": 16, "validationFraction": 0.2})
    done, _ = run_trainer(spec, mlflow_uri, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    run_id = run_of(tracking, "mlp-progress")
    history = {name: sorted((m.step, m.value) for m in tracking.get_metric_history(run_id, name))
               for name in ("progress_epoch", "progress_total_epochs", "progress_step", "progress_total_steps")}
    # 40 training rows in batches of 16: 3 steps an epoch.
    assert history["progress_epoch"] == [(1, 1), (2, 2), (3, 3)]
    assert history["progress_total_epochs"] == [(1, 3), (2, 3), (3, 3)]
    assert history["progress_step"] == [(1, 3), (2, 6), (3, 9)]
    assert history["progress_total_steps"] == [(1, 9), (2, 9), (3, 9)]
    params = tracking.get_run(run_id).data.params
    assert (params["rows"], params["features"], params["target"]) == ("50", "8", "price")


def test_llm_lora_job_through_the_api_on_chat_data(api_factory, tiny_model: Path, tracking: MlflowClient,
                                                   tmp_path: Path) -> None:
    dataset = write_chat_jsonl(tmp_path / "chat.jsonl", rows=12)
    api = api_factory(**WORKLOAD_ENV)
    body = {"taskId": "lora-chat", "experimentName": "llm-training-lora-chat", "modelProfile": "llm_lora",
            "initialModelFilePath": str(tiny_model), "datasetPath": str(dataset),
            "hyperparameters": {**FAST_HYPERPARAMETERS, "numEpoch": 2, "mergeAdapter": False}}
    with api.client() as client:
        created = client.post("/api/v1/train/jobs", json=body)
        assert created.status_code == 201, created.text
        status = wait_for_training(client, "lora-chat", timeout=120)
        assert status["status"] == "Succeeded", status
        run_id = status["mlflowRunId"]
        logs = client.get("/api/v1/train/jobs/lora-chat/logs").text
    steps = json_lines(logs, "step")
    assert [(s["step"], s["totalSteps"], s["epoch"]) for s in steps] == [(i, 6, (i - 1) // 3 + 1) for i in range(1, 7)]
    params = tracking.get_run(run_id).data.params
    assert (params["format"], params["rows"], params["baseModel"]) == ("chat", "12", str(tiny_model))
    top = {f.path for f in tracking.list_artifacts(run_id)}
    assert top == {"adapter", "logs"}  # mergeAdapter false: no merged model; the trainer's log is kept
    assert "adapter/adapter_model.safetensors" in {f.path for f in tracking.list_artifacts(run_id, "adapter")}


# -- the dataset and masking rules, in process ---------------------------------------------------


def write_lines(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(("lines", "expected"), [
    (['{"prompt": "a", "completion": "b"}', "[1, 2]"], "line 2 is an array, not a JSON object"),
    (['{"prompt": "a", "completion": "b"}', '{"text": "c"}'], "line 2 is neither"),
    (['{"prompt": "a", "completion": "b"}', "", '{"messages": [{"role": "assistant", "content": "x"}]}'],
     "line 3 is in chat format but line 1 is prompt_completion"),
    (['{"messages": [{"role": "user", "content": "hi"}]}'], "line 1: no \"assistant\" message"),
    (['{"messages": [{"role": "user"}]}'], "line 1: messages[0] must be"),
    (['{"prompt": "a", "completion": ""}'], "line 1: \"completion\" must be a non-empty string"),
    (["", "  "], "has no records"),
])
def test_dataset_rules_name_the_line(tmp_path: Path, lines: list[str], expected: str) -> None:
    from models.llm_lora import LoraFineTuneHandler

    path = write_lines(tmp_path / "data.jsonl", *lines)
    with pytest.raises(TrainingError, match=re.escape(expected)):
        LoraFineTuneHandler().load_dataset(path, None)


def test_dataset_reads_file_uris_and_refuses_a_target_column(tmp_path: Path) -> None:
    from models.llm_lora import LoraFineTuneHandler

    path = write_lines(tmp_path / "data.jsonl", '{"prompt": "a", "completion": "b", "id": 7}', "",
                       '{"prompt": "", "completion": "c"}')
    data = LoraFineTuneHandler().load_dataset(f"file://{path}", None)
    assert data.describe() == {"rows": 2, "format": "prompt_completion"}
    assert [line for line, _ in data.examples] == [1, 3]
    with pytest.raises(TrainingError, match="targetColumn does not apply"):
        LoraFineTuneHandler().load_dataset(path, "label")


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    from models.llm_lora import IGNORE_INDEX

    return tokenizer.decode([token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_only_completion_and_assistant_tokens_count(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from models.llm_lora import chat_pieces, encode, prompt_completion_pieces

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids, labels = encode(tokenizer, prompt_completion_pieces(tokenizer, {"prompt": "hello",
                                                                         "completion": " world"}), True)
    assert tokenizer.decode(ids) == "hello world</s>"
    assert trained_text(tokenizer, ids, labels) == " world</s>"

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hello world"}, {"role": "user", "content": "the"},
                {"role": "assistant", "content": "the quick"}, {"role": "user", "content": "unanswered"}]
    ids, labels = encode(tokenizer, chat_pieces(tokenizer, messages), False)
    # The chat template's rendering up to the last answer; the loss sees each answer and its end token.
    assert tokenizer.decode(ids) == ("<s>system: be brief</s><s>user: hello</s><s>assistant: hello world</s>"
                                     "<s>user: the</s><s>assistant: the quick</s>")
    assert trained_text(tokenizer, ids, labels) == "hello world</s>the quick</s>"

    tokenizer.chat_template = None  # no template: "role: content" lines
    ids, labels = encode(tokenizer, chat_pieces(tokenizer, messages), False)
    assert tokenizer.decode(ids) == ("system: be brief\nuser: hello\nassistant: hello world</s>\n"
                                     "user: the\nassistant: the quick</s>\n")
    assert trained_text(tokenizer, ids, labels) == "hello world</s>the quick</s>"


def test_qlora_only_on_cuda_with_bitsandbytes_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from models import llm_lora

    real_find_spec = importlib.util.find_spec
    bitsandbytes = {"installed": True}

    def find_spec(name: str, *args: Any) -> Any:
        if name == "bitsandbytes":
            return object() if bitsandbytes["installed"] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert llm_lora.qlora_available("cuda")
    assert not llm_lora.qlora_available("cpu")
    monkeypatch.setenv(llm_lora.QLORA_ENV, "false")  # a profile with qlora_on_gpu: false
    assert not llm_lora.qlora_available("cuda")
    monkeypatch.delenv(llm_lora.QLORA_ENV)
    bitsandbytes["installed"] = False
    assert not llm_lora.qlora_available("cuda")
