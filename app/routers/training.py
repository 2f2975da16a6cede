"""/api/v1/train/jobs: create, list, read status and logs of, and delete training tasks."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from app.core.pages import ListQuery
from app.deps import TrainingDep
from app.routers.common import ERROR_RESPONSES, ContinueQuery, LimitQuery, ProfileQuery
from app.schemas.common import DeletedTask, DryRunResult, ErrorBody
from app.schemas.training import TrainingStatus, TrainingTask, TrainingTaskList, TrainRequest
from app.shutdown import until_shutdown

router = APIRouter(prefix="/api/v1/train/jobs", tags=["training"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=201,
    response_model=TrainingTask | DryRunResult,
    summary="Start a training job (201; 200 when the same request was made before, or with dryRun)",
)
async def create_training_job(
    request: TrainRequest,
    training: TrainingDep,
    response: Response,
    dry_run: Annotated[bool, Query(alias="dryRun", description="Return the Job without creating it")] = False,
) -> TrainingTask | DryRunResult:
    if dry_run:
        _, manifests = training.plan(request)
        response.status_code = 200
        return DryRunResult(manifests=manifests)
    task, created = await training.create(request)
    response.status_code = 201 if created else 200
    return task


@router.get("", response_model=TrainingTaskList, summary="List training tasks, a page at a time with limit")
async def list_training_jobs(
    training: TrainingDep,
    limit: LimitQuery = None,
    continue_token: ContinueQuery = None,
    status: Annotated[TrainingStatus | None, Query(description="Only tasks in this status")] = None,
    profile: ProfileQuery = None,
) -> TrainingTaskList:
    query = ListQuery(limit, continue_token, status.value if status else None, profile)
    items, page = await training.list(query)
    return TrainingTaskList(items=items, continue_token=page.continue_token, remaining_item_count=page.remaining)


@router.get("/{task_id}", response_model=TrainingTask, summary="A training task")
async def get_training_job(task_id: str, training: TrainingDep) -> TrainingTask:
    return await training.get(task_id)


@router.get("/{task_id}/status", response_model=TrainingTask, summary="Status of a training task")
async def get_training_status(task_id: str, training: TrainingDep) -> TrainingTask:
    return await training.get(task_id)


@router.get(
    "/{task_id}/logs",
    summary="The trainer's output; follow=true streams until the job ends",
    responses={200: {"description": "The output as text", "content": {"text/plain": {"schema": {"type": "string"}}}},
               429: {"description": "follow=true while MLOPS_MAX_LOG_FOLLOWERS streams are open on this worker; "
                                    "see Retry-After", "model": ErrorBody}},
)
async def get_training_logs(
    task_id: str,
    training: TrainingDep,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="Only the last N lines")] = None,
    follow: Annotated[bool, Query(description="Stream new lines until the job ends")] = False,
) -> Response:
    if follow:
        stream = await training.follow_logs(task_id, tail)
        return StreamingResponse(until_shutdown(stream), media_type="text/plain; charset=utf-8")
    return PlainTextResponse(await training.logs(task_id, tail))


@router.delete("/{task_id}", response_model=DeletedTask, summary="Cancel and remove a training task")
async def delete_training_job(task_id: str, training: TrainingDep) -> DeletedTask:
    await training.delete(task_id)
    return DeletedTask(task_id=task_id)
