"""Liveness and readiness of the control plane itself."""

from fastapi import APIRouter, Request

from app.errors import DependencyUnavailable

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
