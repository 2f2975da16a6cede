"""OpenAI-compatible routes of a language-model deployment, under its task id:
the `openai` client works with base_url=<API>/api/v1/inference/<task_id>/v1."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import OpenAIProxyDep
from app.routers.common import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/inference/{task_id}/v1", tags=["language models"], responses=ERROR_RESPONSES)

OPENAI_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


async def _pass_through(request: Request, proxy: OpenAIProxyDep, task_id: str, route: str) -> Response:
    body = await request.body()
    content_type = request.headers.get("content-type", "application/json")
    status, upstream_type, chunks = await proxy.open(task_id, request.method, route, body, content_type)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"} if "event-stream" in upstream_type else None
    return StreamingResponse(chunks, status_code=status, media_type=upstream_type, headers=headers)


@router.post("/chat/completions", summary="OpenAI chat completions (stream: true sends server-sent events)",
             openapi_extra=OPENAI_BODY)
async def chat_completions(task_id: str, request: Request, proxy: OpenAIProxyDep) -> Response:
    return await _pass_through(request, proxy, task_id, "chat/completions")


@router.post("/completions", summary="OpenAI completions", openapi_extra=OPENAI_BODY)
async def completions(task_id: str, request: Request, proxy: OpenAIProxyDep) -> Response:
    return await _pass_through(request, proxy, task_id, "completions")


@router.get("/models", summary="The served model, as OpenAI's model list")
async def models(task_id: str, request: Request, proxy: OpenAIProxyDep) -> Response:
    return await _pass_through(request, proxy, task_id, "models")
