"""/api/v1/inference: deployments of trained models, and the predict proxy."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.openai_proxy import OpenAIProxy
from app.core.proxy import PredictProxy
from app.deps import DeploymentsDep
from app.errors import MlopsError, PayloadTooLarge, error_json
from app.routers.common import ERROR_RESPONSES
from app.schemas.common import DeletedTask, DryRunResult
from app.schemas.inference import DeploymentTask, DeploymentTaskList, DeployRequest

router = APIRouter(prefix="/api/v1/inference", tags=["inference"], responses=ERROR_RESPONSES)

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "userId": {"type": "string"},
                        "data": {
                            "type": "object",
                            "properties": {
                                "features": {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "number"}},
                                }
                            },
                            "required": ["features"],
                        },
                    },
                    "required": ["data"],
                },
                "example": {"userId": "user-1234", "data": {"features": [[5.1, 3.5, 1.4, 0.2, 4.9, 3.0, 1.4, 0.2]]}},
            }
        },
    },
    "responses": {
        "200": {
            "description": "The model's answer: predictions, one per row (classifiers add probabilities)",
            "content": {"application/json": {"example": {"predictions": [2.41]}}},
        },
        "413": {"description": "Body larger than the profile allows"},
        "422": {"description": "The model cannot take the payload; the message says why"},
        "502": {"description": "The model server failed"},
        "504": {"description": "The model server did not answer within the profile's timeout"},
    },
}


@router.post(
    "/deployments",
    status_code=201,
    response_model=DeploymentTask | DryRunResult,
    summary="Deploy a trained model (201; 200 when the same request was made before, or with dryRun)",
)
async def create_deployment(
    request: DeployRequest,
    deployments: DeploymentsDep,
    response: Response,
    dry_run: Annotated[bool, Query(alias="dryRun", description="Return the objects without creating them")] = False,
) -> DeploymentTask | DryRunResult:
    if dry_run:
        _, manifests = deployments.plan(request)
        response.status_code = 200
        return DryRunResult(manifests=manifests)
    task, created = await deployments.create(request)
    response.status_code = 201 if created else 200
    return task


@router.get("/deployments", response_model=DeploymentTaskList, summary="List deployments")
async def list_deployments(deployments: DeploymentsDep) -> DeploymentTaskList:
    return DeploymentTaskList(items=await deployments.list())


@router.get("/deployments/{task_id}", response_model=DeploymentTask, summary="A deployment and its status")
async def get_deployment(task_id: str, deployments: DeploymentsDep) -> DeploymentTask:
    return await deployments.get(task_id)


@router.get(
    "/deployments/{task_id}/logs",
    summary="The model server's output",
    responses={200: {"description": "The output as text", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def get_deployment_logs(
    task_id: str,
    deployments: DeploymentsDep,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="Only the last N lines")] = None,
) -> Response:
    return PlainTextResponse(await deployments.logs(task_id, tail))


@router.delete("/deployments/{task_id}", response_model=DeletedTask, summary="Remove a deployment")
async def delete_deployment(task_id: str, deployments: DeploymentsDep) -> DeletedTask:
    await deployments.delete(task_id)
    return DeletedTask(task_id=task_id)


PREDICT_PREFIX = router.prefix + "/"
PREDICT_SUFFIX = "/predict"


class ClientGone(Exception):
    """The caller disconnected before its body was complete."""


async def _read_body(receive: Receive, declared: str | None, limit: int | None) -> bytes:
    """The raw body; 413 past the profile's limit, whether declared or found while it streams."""
    if limit is not None and declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"predict body is {declared} bytes; the profile allows {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise PayloadTooLarge(f"predict body is over {limit} bytes, the profile's limit")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _predict(state: Any, task_id: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
    """A language model takes the seed's body through its OpenAI routes (a profile lookup in memory);
    every other model gets the bytes as they are."""
    language_models: OpenAIProxy = state.openai_proxy
    if language_models.is_language_model(task_id):
        status, payload = await language_models.predict(task_id, body)
        return status, payload, "application/json"
    return await state.proxy.forward(task_id, "/predict", body, content_type)


async def serve_predict(scope: Scope, receive: Receive, send: Send, task_id: str) -> None:
    """POST /api/v1/inference/{task_id}/predict as a bare ASGI handler: two headers and the raw body
    in, the model server's status, content type and bytes out; domain errors in the API's shape."""
    declared = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    proxy: PredictProxy = scope["app"].state.proxy
    try:
        body = await _read_body(receive, declared, proxy.max_body_bytes(task_id))
        status, payload, media_type = await _predict(scope["app"].state, task_id, body,
                                                     content_type or "application/json")
        headers = [(b"content-type", media_type.encode("latin-1"))]
    except ClientGone:
        return
    except MlopsError as exc:
        status, payload = exc.status_code, error_json(exc)
        headers = [(b"content-type", b"application/json"),
                   *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items())]
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class PredictFastPath:
    """ASGI middleware that serves predict calls before FastAPI's routing and request machinery,
    which cost more CPU per request than the forwarding itself (docs/benchmarks.md). Installed
    inside the auth and body-limit middleware; every other request passes through untouched.
    The `predict` route below does the same through FastAPI, and documents it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREDICT_PREFIX) and path.endswith(PREDICT_SUFFIX):
                task_id = path[len(PREDICT_PREFIX) : -len(PREDICT_SUFFIX)]
                if task_id and "/" not in task_id:
                    return await serve_predict(scope, receive, send, task_id)
        await self.app(scope, receive, send)


async def predict(task_id: str, request: Request) -> Response:
    # What serve_predict does, through FastAPI (an app without PredictFastPath); its signature and
    # PREDICT_BODY make the route's documentation.
    proxy: PredictProxy = request.app.state.proxy
    body = await _read_body(request.receive, request.headers.get("content-length"), proxy.max_body_bytes(task_id))
    content_type = request.headers.get("content-type", "application/json")
    status, payload, media_type = await _predict(request.app.state, task_id, body, content_type)
    return Response(content=payload, status_code=status, media_type=media_type)


router.add_api_route(
    "/{task_id}/predict", predict, methods=["POST"], summary="Predict with a deployed model",
    description="Forwards the body as it is to the deployment's model server and answers with the model "
    "server's status and body. The body's shape is the model server's to check (422 with its message).",
    openapi_extra=PREDICT_BODY,
)
