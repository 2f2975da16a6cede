"""Which requests belong to the data plane, and how they are documented in the OpenAPI document.

The data plane answers these routes itself, before FastAPI's routing (whose per-request machinery
costs more CPU than forwarding the call; docs/benchmarks.md), so their OpenAPI entries are written
here, from the same table that dispatches them.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any

PREFIX = "/api/v1/inference/"
# /api/v1/inference/deployments/... are the management routes, never a task's data plane.
RESERVED_TASK_IDS = frozenset({"deployments"})


class Kind(Enum):
    PREDICT = "predict"  # the specification's predict body
    OPENAI = "openai"  # OpenAI's routes, passed through (streamed when the model server streams)


@dataclass(frozen=True)
class Route:
    method: str
    suffix: str  # after /api/v1/inference/{task_id}
    kind: Kind
    upstream_path: str  # on the model server

    @property
    def template(self) -> str:
        return f"{PREFIX}{{task_id}}{self.suffix}"

    @property
    def name(self) -> str:
        """The route's name in metrics: predict, chat/completions, completions, models."""
        return self.suffix.removeprefix("/v1").strip("/")


ROUTES = (
    Route("POST", "/predict", Kind.PREDICT, "/predict"),
    Route("POST", "/v1/chat/completions", Kind.OPENAI, "/v1/chat/completions"),
    Route("POST", "/v1/completions", Kind.OPENAI, "/v1/completions"),
    Route("GET", "/v1/models", Kind.OPENAI, "/v1/models"),
)
_BY_SUFFIX = {route.suffix: route for route in ROUTES}


@dataclass(frozen=True)
class Match:
    task_id: str
    route: Route | None  # None: the path is the data plane's, the method is not (405)
    allowed: str  # the method the path takes


def match(method: str, path: str) -> Match | None:
    """The data-plane route of a request, or None for a request that is not the data plane's."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX):]
    slash = rest.find("/")
    if slash <= 0:
        return None
    route = _BY_SUFFIX.get(rest[slash:])
    task_id = rest[:slash]
    if route is None or task_id in RESERVED_TASK_IDS:
        return None
    return Match(task_id, route if route.method == method else None, route.method)


# -- the OpenAPI document ----------------------------------------------------------------------------

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "title": "Task Id"},
            "description": "The deployment's taskId"}
_COMMON_ERRORS = {
    "404": "Unknown task id, or a route the deployment's model does not serve",
    "502": "The model server failed (a 5xx or a broken answer)",
    "503": "The deployment is not Ready, or its model server cannot be reached; see Retry-After",
    "504": "The model server did not answer within the profile's predict_timeout_seconds",
}
_PREDICT_BODY = {
    "type": "object",
    "properties": {
        "userId": {"type": "string"},
        "data": {
            "type": "object",
            "description": "Tabular models: features, one row per prediction. Language models: prompt, or "
                           "messages (OpenAI chat messages), with optional max_tokens, temperature, top_p.",
            "properties": {
                "features": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "prompt": {"type": "string"},
                "messages": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
    "required": ["data"],
}
_DOCS: dict[str, dict[str, Any]] = {
    "/predict": {
        "tags": ["inference"],
        "summary": "Predict with a deployed model",
        "description": "Forwards the body as it is to the deployment's model server and answers with the model "
                       "server's status and body; the body's shape is the model server's to check (422 with its "
                       "message). A language model takes a prompt or messages and answers "
                       '{"predictions": [text], "finishReason", "usage", "model"}.',
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _PREDICT_BODY,
            "example": {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4, 0.2, 4.9, 3.0, 1.4, 0.2]]}},
        }}},
        "responses": {
            "200": {"description": "The model's answer: predictions, one per row (classifiers add probabilities)",
                    "content": {"application/json": {"example": {"predictions": [2.41]}}}},
            "413": {"description": "Body larger than the profile allows", "content": _ERROR},
            "422": {"description": "The model cannot take the payload; the message says why", "content": _ERROR},
        },
    },
    "/v1/chat/completions": {
        "tags": ["language models"],
        "summary": "OpenAI chat completions (stream: true sends server-sent events)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "OpenAI's chat completion, or its event stream", "content": {
            "application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"description": "The model server refused the request (OpenAI's error body)",
                    "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
    "/v1/completions": {
        "tags": ["language models"],
        "summary": "OpenAI completions",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "OpenAI's completion, or its event stream", "content": {
            "application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"description": "The model server refused the request (OpenAI's error body)",
                    "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
    "/v1/models": {
        "tags": ["language models"],
        "summary": "The served model, as OpenAI's model list",
        "responses": {"200": {"description": "OpenAI's model list",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
}


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The data plane's entries of the OpenAPI document's `paths`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        doc = _DOCS[route.suffix]
        responses = dict(doc["responses"])
        for status, description in _COMMON_ERRORS.items():
            responses.setdefault(status, {"description": description, "content": _ERROR})
        operation = {**doc, "operationId": f"{route.kind.value}_{route.suffix.strip('/').replace('/', '_')}",
                     "parameters": [_TASK_ID], "responses": responses}
        paths[f"{PREFIX}{{task_id}}{route.suffix}"] = {route.method.lower(): operation}
    return paths
