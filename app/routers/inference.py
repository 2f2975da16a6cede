"""/api/v1/inference: deployments of trained models, and the predict proxy."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from app.deps import DeploymentsDep, ProxyDep
from app.errors import PayloadTooLarge
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


@router.post("/{task_id}/predict", summary="Predict with a deployed model", openapi_extra=PREDICT_BODY)
async def predict(task_id: str, request: Request, proxy: ProxyDep) -> Response:
    limit = proxy.max_body_bytes(task_id)
    declared = request.headers.get("content-length")
    if limit is not None and declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"predict body is {declared} bytes; the profile allows {limit}")
    body = await request.body()
    content_type = request.headers.get("content-type", "application/json")
    status, payload, upstream_type = await proxy.forward(task_id, "/predict", body, content_type)
    return Response(content=payload, status_code=status, media_type=upstream_type)
