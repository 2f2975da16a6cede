"""Proxy for language-model deployments: OpenAI's routes passed through byte for byte (server-sent
events chunk by chunk, never buffered), and the seed's predict body mapped onto them.

It has its own connection pool: a streamed completion holds a connection for its whole length,
which must not starve the tabular predict pool.
"""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from app.errors import InvalidSpec, NotReady, TaskNotFound, UpstreamError, UpstreamTimeout
from app.profiles import ModelProfile
from app.runtime.base import Endpoint, EndpointCache

OPENAI_ROUTES = {("POST", "chat/completions"), ("POST", "completions"), ("GET", "models")}


class OpenAIProxy:
    def __init__(self, endpoints: EndpointCache, profiles: dict[str, ModelProfile], pool_size: int = 64):
        self.endpoints = endpoints
        self.profiles = profiles
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=60), auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def language_endpoint(self, task_id: str) -> Endpoint:
        endpoint = self.endpoints.get(task_id)
        if endpoint is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        profile = self.profiles.get(endpoint.profile)
        if profile is None or profile.llm is None:
            raise TaskNotFound(f"deployment '{task_id}' serves profile '{endpoint.profile}', not a language model; "
                               f"use /api/v1/inference/{task_id}/predict", field="taskId")
        if not endpoint.ready:
            raise NotReady(f"deployment '{task_id}' is not ready: {endpoint.message or 'loading the model'}")
        return endpoint

    def is_language_model(self, task_id: str) -> bool:
        endpoint = self.endpoints.get(task_id)
        profile = self.profiles.get(endpoint.profile) if endpoint else None
        return profile is not None and profile.llm is not None

    async def open(self, task_id: str, method: str, route: str, body: bytes, content_type: str
                   ) -> tuple[int, str, AsyncIterator[bytes]]:
        """Send one request upstream; return its status, content type and body as it arrives."""
        endpoint = self.language_endpoint(task_id)
        profile = self.profiles[endpoint.profile]
        assert self._session is not None and profile.inference is not None
        # A long generation may take minutes in total; what must not stall is each next chunk.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10,
                                        sock_read=profile.inference.predict_timeout_seconds)
        headers = {**endpoint.headers, "Content-Type": content_type}
        tls = endpoint.ssl_context if endpoint.ssl_context is not None else True
        try:
            response = await self._session.request(method, f"{endpoint.base_url}/v1/{route}", data=body or None,
                                                   headers=headers, timeout=timeout, ssl=tls)
        except TimeoutError:
            raise UpstreamTimeout(f"language model of '{task_id}' did not answer in time") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            self.endpoints.mark_unready(task_id, f"model server unreachable: {exc.__class__.__name__}")
            raise NotReady(f"deployment '{task_id}' is not reachable right now; retry shortly") from None
        if response.status >= 500:
            text = (await response.read())[:500].decode(errors="replace")
            response.release()
            raise UpstreamError(f"language model of '{task_id}' answered {response.status}: {text}")

        async def chunks() -> AsyncIterator[bytes]:
            # An upstream that breaks mid-stream raises here, so the client's stream breaks too
            # (no clean end that would pass a failed generation off as a short answer).
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            finally:
                response.release()

        return response.status, response.headers.get("Content-Type", "application/json"), chunks()

    async def predict(self, task_id: str, body: bytes) -> tuple[int, bytes]:
        """The seed's predict body for a language model: {"data": {"prompt": ...}} maps to
        /v1/completions, {"data": {"messages": [...]}} to /v1/chat/completions; the answer is
        {"predictions": [text], "finishReason", "usage", "model"}."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidSpec(f"body is not valid JSON: {exc}", field="body") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or not ({"prompt", "messages"} & data.keys()):
            raise InvalidSpec('a language model takes {"data": {"prompt": "..."}} or {"data": {"messages": '
                              '[{"role": "user", "content": "..."}]}}', field="data")
        chat = "messages" in data
        request: dict[str, Any] = {k: v for k, v in data.items() if k in
                                   ("prompt", "messages", "max_tokens", "temperature", "top_p")}
        # The name the server was started with (the deployment's modelId), not the task id: vLLM
        # answers 404 to any other. Objects made before the name was recorded: the server's only model.
        served_name = self.language_endpoint(task_id).served_model_name
        if served_name:
            request["model"] = served_name
        status, _, stream = await self.open(task_id, "POST", "chat/completions" if chat else "completions",
                                            orjson.dumps(request), "application/json")
        answer = b"".join([chunk async for chunk in stream])
        if status != 200:
            return status, answer
        result = orjson.loads(answer)
        choice = result["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        return 200, orjson.dumps({"predictions": [text], "finishReason": choice.get("finish_reason"),
                                  "usage": result.get("usage"), "model": result.get("model")})
