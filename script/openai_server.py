"""The language-model server of an llm_chat deployment, started by script/serve.py.

Where vLLM can run (a CUDA device and the vllm package, i.e. the GPU image on a GPU node) this
process becomes `vllm serve <model> <profile's vLLM arguments>`. Elsewhere it serves the same
OpenAI-compatible routes with a transformers engine on the CPU and says so at start-up and in
its health answer (which the deployment's status shows):
  GET  /health                liveness and readiness: answers once the weights are loaded
  GET  /v1/models             the one served model
  POST /v1/chat/completions   OpenAI's body; "stream": true sends server-sent events as tokens come
  POST /v1/completions        likewise, for a plain prompt
"""

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from models.llm_chat import ChatModelHandler, Generation, TransformersEngine, now, resolve_model_dir
from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, ServeSpec

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def openai_error(message: str, param: str | None = None, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def choose_engine(spec: ServeSpec) -> tuple[str, str]:
    """("vllm" | "transformers", why): vLLM needs the vllm command and a CUDA device."""
    if not spec.use_gpu:
        return "transformers", "useGpu is false"
    if shutil.which("vllm") is None:
        return "transformers", "vLLM is not installed in this image"
    import torch

    if not torch.cuda.is_available():
        return "transformers", "no CUDA device is visible"
    return "vllm", f"{torch.cuda.device_count()} CUDA device(s)"


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"'{name}' must be a number from {low:g} to {high:g}", name)
    return float(value)


class OpenAIApp:
    def __init__(self, spec: ServeSpec, engine: TransformersEngine, detail: str):
        self.spec = spec
        self.engine = engine
        self.model_name = spec.served_model_name or spec.model_id
        self.health = orjson.dumps({"status": "ok", "detail": detail})
        self.models = orjson.dumps({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": now(), "owned_by": "mlops"}]})

    # -- request parsing --------------------------------------------------------------------

    def _common(self, body: Any) -> tuple[int, float, float, bool]:
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported", "n")
        limit = self.spec.max_new_tokens
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", limit))
        if max_tokens is None:
            max_tokens = limit
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
            raise RequestError(f"'max_tokens' must be an integer from 1 to {limit}", "max_tokens")
        temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0) or 1.0
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("'stream' must be a boolean", "stream")
        return max_tokens, temperature, top_p, stream

    @staticmethod
    def _messages(body: dict) -> list[dict[str, str]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
        cleaned = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
                raise RequestError(f"messages[{index}] needs a role of system, user or assistant", "messages")
            content = message.get("content")
            if isinstance(content, list):  # OpenAI's content parts: keep the text ones
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            if not isinstance(content, str):
                raise RequestError(f"messages[{index}].content must be text", "messages")
            cleaned.append({"role": message["role"], "content": content})
        return cleaned

    @staticmethod
    def _prompt(body: dict) -> str:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string", "prompt")
        return prompt

    # -- responses --------------------------------------------------------------------------

    def _usage(self, result: Generation) -> dict[str, int]:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    def chat_response(self, result: Generation, ident: str) -> bytes:
        return orjson.dumps({
            "id": ident, "object": "chat.completion", "created": now(), "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": self._usage(result),
        })

    def completion_response(self, result: Generation, ident: str) -> bytes:
        return orjson.dumps({
            "id": ident, "object": "text_completion", "created": now(), "model": self.model_name,
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": self._usage(result),
        })

    def chunks(self, pieces: Iterator[str | Generation], chat: bool, ident: str) -> Iterator[bytes]:
        created = now()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choice: dict, usage: dict | None = None) -> bytes:
            payload: dict[str, Any] = {"id": ident, "object": kind, "created": created, "model": self.model_name,
                                       "choices": [choice]}
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        if chat:
            yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        for piece in pieces:
            if isinstance(piece, Generation):
                last = {"index": 0, "finish_reason": piece.finish_reason}
                last |= {"delta": {}} if chat else {"text": ""}
                yield event(last, self._usage(piece))
            elif chat:
                yield event({"index": 0, "delta": {"content": piece}, "finish_reason": None})
            else:
                yield event({"index": 0, "text": piece, "finish_reason": None})
        yield b"data: [DONE]\n\n"

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if path == "/health" and method == "GET":
            return await self._send(send, 200, self.health)
        if path == "/v1/models" and method == "GET":
            return await self._send(send, 200, self.models)
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return await self._send(send, 404, openai_error(f"no route {method} {path}", kind="not_found"))
        if method != "POST":
            return await self._send(send, 405, openai_error("use POST"))
        chat = path == "/v1/chat/completions"
        try:
            payload = orjson.loads(body)
            max_tokens, temperature, top_p, stream = self._common(payload)
            prompt = self.engine.chat_prompt(self._messages(payload)) if chat else self._prompt(payload)
        except orjson.JSONDecodeError as exc:
            return await self._send(send, 400, openai_error(f"the body is not valid JSON: {exc}"))
        except RequestError as exc:
            return await self._send(send, exc.status, openai_error(exc.message, exc.param))
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if not stream:
            result = await asyncio.to_thread(self.engine.generate, prompt, max_tokens, temperature, top_p)
            response = self.chat_response(result, ident) if chat else self.completion_response(result, ident)
            return await self._send(send, 200, response)
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        events = self.chunks(self.engine.stream(prompt, max_tokens, temperature, top_p), chat, ident)
        done = object()
        while (chunk := await asyncio.to_thread(next, events, done)) is not done:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _send(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": body})


def main(spec: ServeSpec, engine_args: list[str], fail: Any) -> int:
    host = os.environ.get(SERVE_HOST_ENV, "0.0.0.0")
    port = os.environ.get(SERVE_PORT_ENV, "8080")
    engine, why = choose_engine(spec)
    try:
        model_dir = resolve_model_dir(spec)
    except Exception as exc:
        return fail(f"cannot get the model {spec.model_uri or spec.model_reference}: {type(exc).__name__}: {exc}")
    name = spec.served_model_name or spec.model_id
    if engine == "vllm":
        print(orjson.dumps({"message": "starting vLLM", "why": why, "model": str(model_dir)}).decode(), flush=True)
        command = ["vllm", "serve", str(model_dir), "--host", host, "--port", port, "--served-model-name", name,
                   *engine_args]
        os.execvp(command[0], command)
    detail = f"engine: transformers on cpu (vLLM not used: {why})"
    print(orjson.dumps({"message": "serving with the CPU engine", "why": why, "model": str(model_dir)}).decode(),
          flush=True)
    try:
        app = OpenAIApp(spec, ChatModelHandler().load_engine(spec, "cpu"), detail)
    except Exception as exc:
        return fail(f"cannot load the model from {model_dir}: {type(exc).__name__}: {exc}")
    import uvicorn

    print(orjson.dumps({"message": "model loaded", "model": name, "listen": f"{host}:{port}"}).decode(), flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="off")
    return 0


if __name__ == "__main__":
    sys.exit("run through script/serve.py")
