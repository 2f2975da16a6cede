"""llm_chat served by vLLM's own OpenAI server (its CPU build, from .venv-vllm) on the local runtime,
through the control plane.

One module-wide deployment: a model fine-tuned by an llm_lora run, deployed under a modelId that
differs from its taskId. Against it: the status naming the engine, the specification's predict
route, the official openai client plain and streamed, the weights being the run's merged model, a
rolling update to the base model with streams in flight, and, last, a generation that fails
mid-stream. Beside it, a model vLLM cannot load.
"""

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import mlflow
import openai
import psutil
import pytest
import torch

from models.spec import LLM_STREAM_DRAIN_SECONDS
from script.llm_server import LOCAL_VLLM_PYTHON
from tests.llm_support import (
    make_tiny_model,
    make_unloadable_model,
    write_prompt_completion_jsonl,
    write_test_profiles,
)
from tests.support import ApiProcess, kill_workloads, model_server_dir, model_server_port, wait_until
from tests.test_e2e_local import wait_for_deployment, wait_for_training

ADMIN = "admin-token-for-llm-tests-0123456789"
PREDICTOR = "predict-token-for-llm-tests-0123456789"
TASK_ID, MODEL_ID = "chat-task", "tuned-chat"  # they differ on purpose: clients name the model by modelId
BROKEN_TASK = "broken-task"
# Locally the profile's HF_TOKEN Secret is the API's own environment variable.
HF_TOKEN = "hf_never-in-a-log-0123456789abcdef"
# The sentence the LoRA run learns as prompt "the" -> completion (tests/llm_support.py).
LEARNED = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Iterator[SimpleNamespace]:
    assert LOCAL_VLLM_PYTHON.exists(), "vLLM's CPU environment is missing: run `make vllm-env` (make test does)"
    root = tmp_path_factory.mktemp("llm-serving")
    base = make_tiny_model(root / "tiny-base")
    broken = make_unloadable_model(base, root / "mystery-model")
    api = ApiProcess(root / "data", mlflow_uri, {
        "MLOPS_PROFILES_PATH": str(write_test_profiles(root / "profiles.yaml")),
        "MLOPS_API_TOKENS": f"admin:{ADMIN},predict:{PREDICTOR}", "HF_TOKEN": HF_TOKEN}).start()
    try:
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as client:
            # The model vLLM refuses fails its starts while the LoRA run trains.
            refused = client.post("/api/v1/inference/deployments", json={
                "taskId": BROKEN_TASK, "modelId": "mystery", "modelReference": str(broken), "modelProfile": "llm_chat"})
            assert refused.status_code == 201, refused.text
            trained = client.post("/api/v1/train/jobs", json={
                "taskId": "lora-task", "experimentName": "chat tuning", "modelProfile": "llm_lora",
                "customModelName": "tinyChat", "initialModelFilePath": str(base),
                "datasetPath": str(write_prompt_completion_jsonl(root / "train.jsonl")),
                "hyperparameters": {"numEpoch": 3, "learningRate": 0.02, "numBatch": 4, "loraDropout": 0.0,
                                    "maxSeqLength": 64}})
            assert trained.status_code == 201, trained.text
            status = wait_for_training(client, "lora-task", timeout=300)
            assert status["status"] == "Succeeded", status
            # Seen failed, it goes: its restarts would only slow the next vLLM start down.
            broken_status = wait_for_deployment(client, BROKEN_TASK, want="Failed", timeout=300)
            broken_logs = client.get(f"/api/v1/inference/deployments/{BROKEN_TASK}/logs", params={"tail": 400}).text
            assert client.delete(f"/api/v1/inference/deployments/{BROKEN_TASK}").status_code == 200
            deployed = client.post("/api/v1/inference/deployments", json={
                "taskId": TASK_ID, "modelId": MODEL_ID, "mlflowRunId": status["mlflowRunId"],
                "modelProfile": "llm_chat"})
            assert deployed.status_code == 201, deployed.text
            wait_for_deployment(client, TASK_ID, timeout=420)
        yield SimpleNamespace(api=api, base=base, run_id=status["mlflowRunId"], mlflow_uri=mlflow_uri,
                              data_dir=root / "data", broken_status=broken_status, broken_logs=broken_logs)
    finally:
        api.stop()
        kill_workloads(root / "data")


def test_language_model_requests_are_checked_before_anything_runs(api, tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny")
    with api.client() as client:
        wrong_profile = client.post("/api/v1/inference/deployments", json={
            "taskId": "t1", "modelId": "m1", "modelReference": str(model), "modelProfile": "tabular_regression"})
        assert wrong_profile.status_code == 422 and wrong_profile.json()["error"]["field"] == "modelReference"
        both = client.post("/api/v1/inference/deployments", json={
            "taskId": "t1", "modelId": "m1", "modelReference": str(model), "mlflowRunId": "a" * 32,
            "modelProfile": "llm_chat"})
        assert both.status_code == 422 and both.json()["error"]["field"] == "mlflowRunId"
        outside = client.post("/api/v1/inference/deployments", json={
            "taskId": "t1", "modelId": "m1", "modelReference": "evil/model", "modelProfile": "llm_chat"})
        assert outside.status_code == 403 and outside.json()["error"]["field"] == "modelReference"
        no_base = client.post("/api/v1/train/jobs", json={
            "taskId": "lora-1", "experimentName": "x", "modelProfile": "llm_lora", "datasetPath": "s3://b/d.jsonl"})
        assert no_base.status_code == 422 and no_base.json()["error"]["field"] == "initialModelFilePath"
        serve_only = client.post("/api/v1/train/jobs", json={
            "taskId": "chat-train", "experimentName": "x", "modelProfile": "llm_chat", "datasetPath": "s3://b/d"})
        assert serve_only.status_code == 422 and "only serves" in serve_only.json()["error"]["message"]
        lora = {"taskId": "lora-1", "experimentName": "x", "modelProfile": "llm_lora", "datasetPath": "s3://b/d.jsonl",
                "initialModelFilePath": str(model)}
        column = client.post("/api/v1/train/jobs", json={**lora, "targetColumn": "y"})
        assert column.status_code == 422 and column.json()["error"]["field"] == "targetColumn"
        unmerged = client.post("/api/v1/train/jobs", json={**lora, "customModelName": "chat",
                                                           "hyperparameters": {"mergeAdapter": False}})
        assert unmerged.status_code == 422 and unmerged.json()["error"]["field"] == "customModelName"
        assert not any(api.data_dir.glob("tasks/*/*"))


def admin_client(served: SimpleNamespace) -> httpx.Client:
    return httpx.Client(base_url=served.api.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)


def openai_client(served: SimpleNamespace, token: str = PREDICTOR) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.api.url}/api/v1/inference/{TASK_ID}/v1", api_key=token, max_retries=0)


def test_status_names_the_engine_and_what_it_serves(served) -> None:
    with admin_client(served) as client:
        status = client.get(f"/api/v1/inference/deployments/{TASK_ID}").json()
    assert status["status"] == "Ready" and status["engine"] == "vllm"
    assert status["message"] == f"vLLM's OpenAI server (CPU build) serves '{MODEL_ID}'"
    assert status["mlflowRunId"] == served.run_id and status["modelId"] == MODEL_ID
    models = openai_client(served).models.list()
    assert [model.id for model in models.data] == [MODEL_ID]
    assert models.data[0].owned_by == "vllm"  # vLLM's own answer, passed through


def test_the_hf_token_reaches_the_server_and_no_log(served) -> None:
    serve_pid = json.loads((model_server_dir(served.data_dir, TASK_ID) / "status.json").read_text())["pid"]
    assert psutil.Process(serve_pid).environ()["HF_TOKEN"] == HF_TOKEN
    with admin_client(served) as client:
        logs = client.get(f"/api/v1/inference/deployments/{TASK_ID}/logs").text
    assert "Starting vLLM server" in logs
    for text in (logs, served.api.log_path.read_text()):
        assert HF_TOKEN not in text


def test_specification_predict_route_names_the_model_by_its_id_not_the_task_id(served) -> None:
    with httpx.Client(base_url=served.api.url, headers={"Authorization": f"Bearer {PREDICTOR}"}, timeout=60) as client:
        by_prompt = client.post(f"/api/v1/inference/{TASK_ID}/predict",
                                json={"userId": "u-1", "data": {"prompt": "the quick", "max_tokens": 3}})
        assert by_prompt.status_code == 200, by_prompt.text
        body = by_prompt.json()
        assert len(body["predictions"]) == 1 and isinstance(body["predictions"][0], str)
        assert body["model"] == MODEL_ID and body["finishReason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 3
        by_messages = client.post(f"/api/v1/inference/{TASK_ID}/predict", json={
            "data": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}})
        assert by_messages.status_code == 200, by_messages.text
        assert by_messages.json()["model"] == MODEL_ID
        assert by_messages.json()["usage"]["completion_tokens"] <= 2
        tabular = client.post(f"/api/v1/inference/{TASK_ID}/predict", json={"data": {"features": [[1.0]]}})
        assert tabular.status_code == 422 and tabular.json()["error"]["field"] == "data"


def test_openai_client_plain_and_streamed_with_the_deployments_model_id(served) -> None:
    sdk = openai_client(served)
    chat = sdk.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    assert chat.model == MODEL_ID and chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 5

    chunks = list(sdk.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=12, stream=True,
                                              extra_body={"ignore_eos": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 6  # token by token, not one buffered answer
    assert chunks[-1].choices[0].finish_reason == "length"

    text = sdk.completions.create(model=MODEL_ID, prompt="the quick", max_tokens=4)
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")
    streamed = [c.choices[0].text for c in sdk.completions.create(
        model=MODEL_ID, prompt="the", max_tokens=8, stream=True, extra_body={"ignore_eos": True})]
    assert len([piece for piece in streamed if piece]) >= 4

    # The task id is not a model name: vLLM's own 404 comes back as it is.
    with pytest.raises(openai.NotFoundError, match=TASK_ID):
        sdk.completions.create(model=TASK_ID, prompt="the", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        openai_client(served, token="not-a-token-0123456789").models.list()


def prompt_logprobs_by_transformers(model, tokenizer, text: str) -> list[float]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(ids).logits.log_softmax(-1)[0]
    return [float(logits[i - 1, ids[0, i]]) for i in range(1, ids.shape[1])]


def test_mlops_chat_streams_the_models_answers_and_keeps_the_conversation(served) -> None:
    from typer.testing import CliRunner

    from mlops_client.cli import app as cli_app

    env = {"MLOPS_API_URL": served.api.url, "MLOPS_API_TOKEN": PREDICTOR, "MLOPS_CONFIG": "/nonexistent.yaml"}
    chatted = CliRunner().invoke(cli_app, ["chat", TASK_ID, "--max-tokens", "8"], input="hello\nthe quick\n", env=env)
    assert chatted.exit_code == 0, chatted.output
    assert f"chatting with {MODEL_ID}" in chatted.stderr
    assert len(chatted.stdout.strip().splitlines()) >= 2  # one streamed answer per line typed
    missing = CliRunner().invoke(cli_app, ["chat", "no-such-task"], input="hi\n", env=env)
    assert missing.exit_code == 1 and "no-such-task" in missing.stderr


def test_the_served_weights_are_the_lora_runs_merged_model(served) -> None:
    with httpx.Client(base_url=served.api.url, headers={"Authorization": f"Bearer {PREDICTOR}"}, timeout=60) as client:
        answer = client.post(f"/api/v1/inference/{TASK_ID}/v1/completions", json={
            "model": MODEL_ID, "prompt": LEARNED, "max_tokens": 1, "prompt_logprobs": 0})
    assert answer.status_code == 200, answer.text
    scored = answer.json()["choices"][0]["prompt_logprobs"][1:]  # the first token has no logprob
    served_logprobs = [next(iter(entry.values()))["logprob"] for entry in scored]

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(served.mlflow_uri)
    try:
        tuned = mlflow.transformers.load_model(f"runs:/{served.run_id}/model", return_type="components")
    finally:
        mlflow.set_tracking_uri(previous)
    from transformers import AutoModelForCausalLM

    expected = prompt_logprobs_by_transformers(tuned["model"], tuned["tokenizer"], LEARNED)
    base = prompt_logprobs_by_transformers(AutoModelForCausalLM.from_pretrained(served.base), tuned["tokenizer"],
                                           LEARNED)
    assert len(served_logprobs) == len(expected)
    assert all(math.isclose(got, want, abs_tol=1e-4) for got, want in zip(served_logprobs, expected, strict=True)), (
        served_logprobs, expected)
    # The run learned the sentence: the served model finds it likelier than the base model does.
    assert sum(expected) > sum(base) + 1.0, (sum(expected), sum(base))


def test_a_model_vllm_cannot_load_fails_the_deployment_saying_why(served) -> None:
    failed, logs = served.broken_status, served.broken_logs
    assert failed["engine"] == "vllm"
    message = failed["message"]
    assert "vLLM exited with code 1" in message, message
    assert "Model architectures ['MysteryForCausalLM'] are not supported" in message, message
    assert len(message) < 1000  # vLLM's list of every architecture it knows is cut short
    assert "Traceback" in logs  # the whole story stays in the logs


def served_prompt_logprobs(served: SimpleNamespace, text: str) -> list[float]:
    with httpx.Client(base_url=served.api.url, headers={"Authorization": f"Bearer {PREDICTOR}"}, timeout=60) as client:
        answer = client.post(f"/api/v1/inference/{TASK_ID}/v1/completions", json={
            "model": MODEL_ID, "prompt": text, "max_tokens": 1, "prompt_logprobs": 0})
    assert answer.status_code == 200, answer.text
    return [next(iter(entry.values()))["logprob"] for entry in answer.json()["choices"][0]["prompt_logprobs"][1:]]


@dataclass
class Stream:
    """One streamed completion through the API: the revision that answered it, when it began and
    ended, and how (its finish reasons and text pieces, or the error that broke it)."""

    revision: str | None = None
    started: float = 0.0
    ended: float = 0.0
    status: int = 0
    pieces: int = 0
    tokens: int = 0  # generated, as the final usage chunk counts them
    finish_reasons: list[str | None] = field(default_factory=list)
    error: str | None = None


def stream_completion(served: SimpleNamespace, max_tokens: int, server: str | None = None) -> Stream:
    """A streamed completion through the API, or, with `server`, from that model server directly."""
    result = Stream(started=time.monotonic())
    base = server or served.api.url
    path = "/v1/completions" if server else f"/api/v1/inference/{TASK_ID}/v1/completions"
    body = {"model": MODEL_ID, "prompt": "the", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {PREDICTOR}"}, timeout=120) as client, \
                client.stream("POST", path, json=body) as answer:
            result.status, result.revision = answer.status_code, answer.headers.get("x-mlops-revision")
            # Server-sent events end with a blank line; their lines end with \n only (a generated
            # text may hold other line breaks, JSON-encoded as they are).
            pending = b""
            for raw in answer.iter_bytes():
                *events, pending = (pending + raw).split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: ") and event != b"data: [DONE]":
                        chunk = json.loads(event[len(b"data: "):])
                        if "choices" not in chunk:  # an error event: the generation failed mid-stream
                            result.error = f"error event: {chunk}"
                            break
                        result.pieces += 1
                        if chunk.get("usage"):
                            result.tokens = chunk["usage"]["completion_tokens"]
                        if chunk["choices"]:
                            result.finish_reasons.append(chunk["choices"][0]["finish_reason"])
            if pending.strip():
                result.error = f"the stream ended inside an event: {pending[:200]!r}"
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: an event cut in the middle
        result.error = f"{type(exc).__name__}: {exc}"
    result.ended = time.monotonic()
    return result


def test_a_new_model_rolls_out_while_the_streams_in_flight_finish_on_their_revision(served) -> None:
    """Revision 1 serves the LoRA run's merged model; PATCH to the base model makes revision 2.
    Streams through the API run back to back for the whole rollout and none breaks; a long stream
    that revision 1 began after the switch finishes although revision 1 was told to stop during it
    (vLLM drains), and revision 1's server then exits (its memory released)."""
    assert served_prompt_logprobs(served, LEARNED)  # revision 1 answers
    done: list[Stream] = []
    stop = threading.Event()

    def keep_streaming() -> None:
        while not stop.is_set():
            done.append(stream_completion(served, max_tokens=600))

    def into(results: list[Stream], **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.append(stream_completion(served, **kwargs)), daemon=True)
        thread.start()
        return thread

    threads = [threading.Thread(target=keep_streaming, daemon=True) for _ in range(2)]
    revision_1 = model_server_dir(served.data_dir, TASK_ID)
    pid_1 = json.loads((revision_1 / "status.json").read_text())["pid"]
    server_1 = f"http://127.0.0.1:{model_server_port(served.data_dir, TASK_ID, 1)}"
    drained: list[Stream] = []
    for thread in threads:
        thread.start()
    try:
        with admin_client(served) as client:
            deployment = f"/api/v1/inference/deployments/{TASK_ID}"
            patched = client.patch(deployment, json={"modelReference": str(served.base)})
            assert patched.status_code in (200, 202), patched.text
            wait_until(lambda: client.get(deployment).json().get("servingRevision") == 2, timeout=600, interval=0.2,
                       what="revision 2 to serve")
            # Revision 1 drains for a few seconds before it is told to stop: a stream begun on it now,
            # as long as the model allows, is in flight when it is.
            # 2500 tokens: longer than the drain on a fast machine, shorter than vLLM's 300 s drain
            # limit on one as loaded as a full `make test` run (13 tokens/s seen there).
            long_stream = into(drained, max_tokens=2500, server=server_1)
            # The local runtime marks the old server retired as it tells it to stop.
            wait_until(lambda: (revision_1 / "retired").exists() or not revision_1.exists(), timeout=60,
                       interval=0.1, what="revision 1 to be told to stop")
            told_to_stop = time.monotonic()
            revisions = client.get(f"{deployment}/revisions").json()["items"]
        long_stream.join(LLM_STREAM_DRAIN_SECONDS)
        wait_until(lambda: not psutil.pid_exists(pid_1) or psutil.Process(pid_1).status() == psutil.STATUS_ZOMBIE,
                   timeout=60, what="revision 1's server to exit once its stream ended")
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert {r["revision"]: r["state"] for r in revisions} == {1: "Retired", 2: "Serving"}, revisions
    broken = [s for s in done if s.status != 200 or s.error or s.finish_reasons[-1:] != ["length"] or s.tokens != 600]
    assert not broken, broken[:3]
    assert {s.revision for s in done} == {"1", "2"}, [s.revision for s in done]
    [last] = drained
    assert last.status == 200 and last.error is None and last.tokens == 2500, last
    assert last.started < told_to_stop < last.ended, (
        f"the long stream was not in flight when revision 1 was told to stop ({last.ended - last.started:.0f} s)")
    # Revision 2 serves the base model's weights, not the tuned ones.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = prompt_logprobs_by_transformers(AutoModelForCausalLM.from_pretrained(served.base),
                                               AutoTokenizer.from_pretrained(served.base), LEARNED)
    served_logprobs = served_prompt_logprobs(served, LEARNED)
    assert all(math.isclose(got, want, abs_tol=1e-4) for got, want in zip(served_logprobs, expected, strict=True)), (
        served_logprobs, expected)


def vllm_worker(served: SimpleNamespace, task_id: str) -> psutil.Process:
    """The process that runs the model of a deployment (vLLM's worker, under script/serve.py)."""
    status = json.loads((model_server_dir(served.data_dir, task_id) / "status.json").read_text())
    workers = [p for p in psutil.Process(status["pid"]).children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert len(workers) == 1, workers
    return workers[0]


def test_a_generation_that_fails_mid_stream_breaks_the_clients_stream(served) -> None:
    """The module deployment's last test (keep it last): vLLM's worker is killed, as the kernel's OOM
    killer would, while it streams."""
    worker = vllm_worker(served, TASK_ID)
    stream = openai_client(served).completions.create(model=MODEL_ID, prompt="the", max_tokens=3000, stream=True,
                                                      extra_body={"ignore_eos": True})
    received: list[str] = []
    finish_reasons = []
    with pytest.raises(openai.APIError, match="EngineCore"):
        for chunk in stream:
            received.append(chunk.choices[0].text)
            finish_reasons.append(chunk.choices[0].finish_reason)
            if len(received) == 3:
                worker.kill()
    assert 3 <= len(received) < 3000 and set(finish_reasons) == {None}  # no end that passes for an answer
    # The server goes down with its engine: the deployment leaves rotation, and is restarted.
    with admin_client(served) as client:
        wait_until(lambda: client.get(f"/api/v1/inference/deployments/{TASK_ID}").json()["status"] != "Ready",
                   timeout=60, what="the deployment to leave Ready")
        assert client.delete(f"/api/v1/inference/deployments/{TASK_ID}").status_code == 200
