"""Liveness and readiness of the control plane itself."""

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The API has loaded its profiles and started its runtime")
async def readyz(request: Request) -> dict[str, object]:
    state = request.app.state
    return {"status": "ok", "runtime": state.settings.runtime.value, "profiles": sorted(state.profiles)}
