"""The specification's predict body for a language model, carried over OpenAI's routes:
{"data": {"prompt": ...}} becomes /v1/completions, {"data": {"messages": [...]}} becomes
/v1/chat/completions, and the answer comes back as {"predictions": [text], "finishReason",
"usage", "model"}."""

from typing import Any

import orjson

from app.errors import InvalidSpec, UpstreamError

PASSED_ON = ("prompt", "messages", "max_tokens", "temperature", "top_p")
USAGE = 'a language model takes {"data": {"prompt": "..."}} or {"data": {"messages": [{"role": "user", ' \
        '"content": "..."}]}}'


def openai_request(body: bytes, model_name: str | None) -> tuple[str, bytes]:
    """The OpenAI route and body for a predict body. `model_name` is the name the model server
    serves the model under (vLLM answers 404 for any other); None for a deployment made before
    it was recorded, whose server then answers with its only model."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidSpec(f"body is not valid JSON: {exc}", field="body") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or not ({"prompt", "messages"} & data.keys()):
        raise InvalidSpec(USAGE, field="data")
    request: dict[str, Any] = {key: value for key, value in data.items() if key in PASSED_ON}
    if model_name is not None:
        request["model"] = model_name
    route = "/v1/chat/completions" if "messages" in data else "/v1/completions"
    return route, orjson.dumps(request)


def predictions(task_id: str, answer: bytes, chat: bool) -> bytes:
    """The predict answer for an OpenAI completion."""
    try:
        result = orjson.loads(answer)
        choice = result["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UpstreamError(f"model server of '{task_id}' answered a completion without a choice: "
                            f"{answer[:200].decode(errors='replace')}") from None
    return orjson.dumps({"predictions": [text], "finishReason": choice.get("finish_reason"),
                         "usage": result.get("usage"), "model": result.get("model")})
