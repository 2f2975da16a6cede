"""Liveness, readiness and metrics of the control plane itself."""

from fastapi import APIRouter, Request, Response

from app.core.blocking import run_blocking
from app.errors import DependencyUnavailable
from app.metrics import CONTENT_TYPE, exposition
from app.state_metrics import state_families

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The API has loaded its profiles and its runtime can serve",
    responses={503: {"description": "The runtime cannot serve now, e.g. the Kubernetes API cannot be reached"}},
)
async def readyz(request: Request) -> dict[str, object]:
    state = request.app.state
    reason = state.runtime.unready_reason()
    if reason is not None:
        raise DependencyUnavailable(f"not ready: {reason}")
    return {"status": "ok", "runtime": state.settings.runtime.value, "profiles": sorted(state.profiles)}


@router.get("/metrics", summary="Prometheus metrics of the control plane (text format)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    families = await state_families(request.app.state.runtime)
    return Response(await run_blocking(exposition, families), media_type=CONTENT_TYPE)
