"""/api/v1/inference/deployments: deployments of trained models (predict is the data plane's:
app/dataplane)."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from app.core.pages import ListQuery
from app.deps import DeploymentsDep
from app.routers.common import ERROR_RESPONSES, ContinueQuery, LimitQuery, ProfileQuery
from app.schemas.common import DeletedTask, DryRunResult
from app.schemas.inference import (
    CanaryPromotion,
    CanaryRequest,
    CanaryWeight,
    DeploymentStatus,
    DeploymentTask,
    DeploymentTaskList,
    DeploymentUpdate,
    DeployRequest,
    RevisionList,
    RollbackRequest,
)

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
        _, manifests = await deployments.plan(request, check_runs=False)
        response.status_code = 200
        return DryRunResult(manifests=manifests)
    task, created = await deployments.create(request)
    response.status_code = 201 if created else 200
    return task


@router.get("/deployments", response_model=DeploymentTaskList, summary="List deployments, a page at a time with limit")
async def list_deployments(
    deployments: DeploymentsDep,
    limit: LimitQuery = None,
    continue_token: ContinueQuery = None,
    status: Annotated[DeploymentStatus | None, Query(description="Only deployments in this status")] = None,
    profile: ProfileQuery = None,
) -> DeploymentTaskList:
    query = ListQuery(limit, continue_token, status.value if status else None, profile)
    items, page = await deployments.list(query)
    return DeploymentTaskList(items=items, continue_token=page.continue_token, remaining_item_count=page.remaining)


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


DryRunQuery = Annotated[bool, Query(alias="dryRun", description="Return the objects without changing anything")]


def _answer(result: DeploymentTask | list[dict], response: Response) -> DeploymentTask | DryRunResult:
    if isinstance(result, list):
        response.status_code = 200
        return DryRunResult(manifests=result)
    return result  # 202: accepted, the rollout goes on after the answer


@router.patch(
    "/deployments/{task_id}",
    status_code=202,
    response_model=DeploymentTask | DryRunResult,
    summary="Update a deployment: a new model (a new revision, rolled out with no failed request), replicas, "
            "or an MLflow alias (202; 200 with dryRun)",
)
async def update_deployment(
    task_id: str, change: DeploymentUpdate, deployments: DeploymentsDep, response: Response,
    dry_run: DryRunQuery = False,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.update(task_id, change, dry_run), response)


@router.get("/deployments/{task_id}/revisions", response_model=RevisionList,
            summary="The deployment's revisions, the newest first, with the state of each")
async def list_revisions(task_id: str, deployments: DeploymentsDep) -> RevisionList:
    return await deployments.revisions(task_id)


@router.post(
    "/deployments/{task_id}/rollback",
    status_code=202,
    response_model=DeploymentTask | DryRunResult,
    summary="Serve an earlier revision's model again (default: the revision before the newest), as a new "
            "revision rolled out with no failed request (202; 200 with dryRun)",
)
async def rollback_deployment(
    task_id: str, deployments: DeploymentsDep, response: Response, dry_run: DryRunQuery = False,
    body: RollbackRequest | None = None,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.rollback(task_id, body or RollbackRequest(), dry_run), response)


@router.post(
    "/deployments/{task_id}/canary",
    status_code=202,
    response_model=DeploymentTask | DryRunResult,
    summary="Start a canary: a second revision taking trafficPercent of the predicts, aborted by itself when "
            "autoAbort's thresholds break (202; 409 while a canary runs; 200 with dryRun)",
)
async def start_canary(
    task_id: str, body: CanaryRequest, deployments: DeploymentsDep, response: Response, dry_run: DryRunQuery = False,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.start_canary(task_id, body, dry_run), response)


@router.patch("/deployments/{task_id}/canary", status_code=202, response_model=DeploymentTask | DryRunResult,
              summary="Change the canary's share of the predicts (202; 404 without a canary; 200 with dryRun)")
async def reweight_canary(
    task_id: str, body: CanaryWeight, deployments: DeploymentsDep, response: Response, dry_run: DryRunQuery = False,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.reweight_canary(task_id, body, dry_run), response)


@router.post("/deployments/{task_id}/canary/promote", status_code=202, response_model=DeploymentTask | DryRunResult,
             summary="Make the canary the only revision; its registered version gets promoteAlias (champion) "
                     "(202; 404 without a canary; 200 with dryRun)")
async def promote_canary(
    task_id: str, deployments: DeploymentsDep, response: Response, dry_run: DryRunQuery = False,
    body: CanaryPromotion | None = None,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.promote_canary(task_id, body or CanaryPromotion(), dry_run), response)


@router.delete("/deployments/{task_id}/canary", status_code=202, response_model=DeploymentTask | DryRunResult,
               summary="Abort the canary: the serving revision takes every predict again (202; 404 without a "
                       "canary; 200 with dryRun)")
async def abort_canary(
    task_id: str, deployments: DeploymentsDep, response: Response, dry_run: DryRunQuery = False,
) -> DeploymentTask | DryRunResult:
    return _answer(await deployments.abort_canary(task_id, dry_run=dry_run), response)


@router.delete("/deployments/{task_id}", response_model=DeletedTask, summary="Remove a deployment")
async def delete_deployment(task_id: str, deployments: DeploymentsDep) -> DeletedTask:
    await deployments.delete(task_id)
    return DeletedTask(task_id=task_id)
