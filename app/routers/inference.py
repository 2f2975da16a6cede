"""/api/v1/inference/deployments: deployments of trained models (predict is the data plane's:
app/dataplane)."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from app.deps import DeploymentsDep
from app.routers.common import ERROR_RESPONSES
from app.schemas.common import DeletedTask, DryRunResult
from app.schemas.inference import DeploymentTask, DeploymentTaskList, DeployRequest

router = APIRouter(prefix="/api/v1/inference", tags=["inference"], responses=ERROR_RESPONSES)

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
