"""llm_chat on the local runtime: OpenAI's routes through the control plane, streamed chunk by chunk,
with the CPU engine chosen automatically (no CUDA here), and the official openai client."""

import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.llm_support import make_tiny_model
from tests.support import wait_until
from tests.test_e2e_local import wait_for_deployment

ADMIN = "admin-token-for-llm-tests-0123456789"
PREDICTOR = "predict-token-for-llm-tests-0123456789"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("llm") / "tiny-llama")


def test_chat_deployment_speaks_openai_plain_streamed_and_to_the_openai_client(api_factory, tiny_model) -> None:
    api = api_factory(MLOPS_API_TOKENS=f"admin:{ADMIN},predict:{PREDICTOR}")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with api.client(headers=admin) as client:
        created = client.post("/api/v1/inference/deployments", json={
            "taskId": "chat-1", "modelId": "tiny-chat", "modelReference": str(tiny_model),
            "modelProfile": "llm_chat"})
        assert created.status_code == 201, created.text
        ready = wait_for_deployment(client, "chat-1")
        assert "transformers on cpu" in ready["message"]  # the engine it chose, and why
        assert ready["modelReference"] == str(tiny_model) and ready["mlflowRunId"] is None

    base = f"{api.url}/api/v1/inference/chat-1/v1"
    predict = {"Authorization": f"Bearer {PREDICTOR}"}
    with httpx.Client(base_url=base, headers=predict, timeout=60) as client:
        # With several API workers, one that has not probed since the server came up answers 503
        # with Retry-After for up to a probe interval: retry as a client is told to.
        models = wait_until(lambda: (r := client.get("/models")).status_code == 200 and r.json(), timeout=10,
                            what="every API worker to route to the model")
        assert [m["id"] for m in models["data"]] == ["tiny-chat"]
        plain = client.post("/chat/completions", json={
            "model": "tiny-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6})
        assert plain.status_code == 200, plain.text
        body = plain.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 6

        arrivals: list[tuple[float, str]] = []
        with client.stream("POST", "/chat/completions", json={
            "model": "tiny-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12,
            "stream": True}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.monotonic(), line.removeprefix("data: ")))
        assert arrivals[-1][1] == "[DONE]"
        events = [json.loads(data) for _, data in arrivals[:-1]]
        content = [e["choices"][0]["delta"].get("content") for e in events if e["choices"][0]["delta"].get("content")]
        assert len(content) >= 3  # several chunks, not one buffered answer
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert arrivals[0][0] < arrivals[-1][0]  # they came over time

        refused = client.post("/chat/completions", json={"model": "tiny-chat", "messages": []})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"

    sdk = openai.OpenAI(base_url=base, api_key=PREDICTOR, max_retries=0)
    completion = sdk.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=5)
    assert completion.choices[0].message.role == "assistant"
    pieces = [chunk.choices[0].delta.content for chunk in sdk.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True)
        if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 2
    text = sdk.completions.create(model="tiny-chat", prompt="the quick", max_tokens=4)
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="not-a-token-0123456789", max_retries=0).models.list()

    # The seed's predict route maps onto the same model.
    with httpx.Client(base_url=api.url, headers=predict, timeout=60) as client:
        by_prompt = client.post("/api/v1/inference/chat-1/predict",
                                json={"userId": "u-1", "data": {"prompt": "the quick", "max_tokens": 3}})
        assert by_prompt.status_code == 200, by_prompt.text
        assert len(by_prompt.json()["predictions"]) == 1 and isinstance(by_prompt.json()["predictions"][0], str)
        assert by_prompt.json()["usage"]["completion_tokens"] <= 3
        by_messages = client.post("/api/v1/inference/chat-1/predict", json={
            "data": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}})
        assert by_messages.status_code == 200 and by_messages.json()["model"] == "tiny-chat"
        tabular_body = client.post("/api/v1/inference/chat-1/predict", json={"data": {"features": [[1.0]]}})
        assert tabular_body.status_code == 422 and tabular_body.json()["error"]["field"] == "data"

    with api.client(headers=admin) as client:
        assert client.delete("/api/v1/inference/deployments/chat-1").status_code == 200
        assert client.post("/api/v1/inference/chat-1/v1/chat/completions", json={}).status_code == 404


def test_language_model_requests_are_checked_before_anything_runs(api, tiny_model) -> None:
    with api.client() as client:
        wrong_profile = client.post("/api/v1/inference/deployments", json={
            "taskId": "t1", "modelId": "m1", "modelReference": str(tiny_model), "modelProfile": "tabular_regression"})
        assert wrong_profile.status_code == 422 and wrong_profile.json()["error"]["field"] == "modelReference"
        both = client.post("/api/v1/inference/deployments", json={
            "taskId": "t1", "modelId": "m1", "modelReference": str(tiny_model), "mlflowRunId": "a" * 32,
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
                "initialModelFilePath": str(tiny_model)}
        column = client.post("/api/v1/train/jobs", json={**lora, "targetColumn": "y"})
        assert column.status_code == 422 and column.json()["error"]["field"] == "targetColumn"
        unmerged = client.post("/api/v1/train/jobs", json={**lora, "customModelName": "chat",
                                                           "hyperparameters": {"mergeAdapter": False}})
        assert unmerged.status_code == 422 and unmerged.json()["error"]["field"] == "customModelName"
        assert not any(api.data_dir.glob("tasks/*/*"))


def test_lora_fine_tune_then_chat_with_the_result(api, tiny_model, tmp_path: Path) -> None:
    """The issue's flow: LoRA train job -> Succeeded with a run id -> deploy llm_chat from that run ->
    chat completion, plain and streamed -> delete."""
    from tests.llm_support import write_prompt_completion_jsonl
    from tests.test_e2e_local import wait_for_training

    dataset = write_prompt_completion_jsonl(tmp_path / "train.jsonl")
    with api.client() as client:
        created = client.post("/api/v1/train/jobs", json={
            "taskId": "lora-e2e", "experimentName": "chat tuning", "modelProfile": "llm_lora",
            "customModelName": "tinyChat", "initialModelFilePath": str(tiny_model), "datasetPath": str(dataset),
            "hyperparameters": {"numEpoch": 2, "numBatch": 8, "learningRate": 0.01, "loraRank": 4}})
        assert created.status_code == 201, created.text
        status = wait_for_training(client, "lora-e2e", timeout=240)
        assert status["status"] == "Succeeded", status
        deployed = client.post("/api/v1/inference/deployments", json={
            "taskId": "chat-from-run", "modelId": "tiny-tuned", "mlflowRunId": status["mlflowRunId"],
            "modelProfile": "llm_chat"})
        assert deployed.status_code == 201, deployed.text
        wait_for_deployment(client, "chat-from-run", timeout=180)
        base = "/api/v1/inference/chat-from-run/v1"
        answer = client.post(f"{base}/chat/completions", json={
            "model": "tiny-tuned", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tiny-tuned"
        with client.stream("POST", f"{base}/completions", json={
                "model": "tiny-tuned", "prompt": "the", "max_tokens": 6, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3
        # A tabular profile cannot deploy a language-model run.
        wrong = client.post("/api/v1/inference/deployments", json={
            "taskId": "wrong", "modelId": "wrong", "mlflowRunId": status["mlflowRunId"],
            "modelProfile": "tabular_regression"})
        assert wrong.status_code == 422 and "llm_lora" in wrong.json()["error"]["message"]
        assert client.delete("/api/v1/inference/deployments/chat-from-run").status_code == 200
