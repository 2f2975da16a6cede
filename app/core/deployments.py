"""Inference tasks: check the MLflow run, build the Deployment and Service, hand them to the runtime."""

import logging
from pathlib import Path
from typing import Any

from app.core.blocking import run_blocking
from app.core.manifests import KIND_INFERENCE, ClusterRefs, inference_deployment, inference_service
from app.core.names import id_problem, inference_name
from app.core.requests import check_same_request
from app.core.tracking import Tracking
from app.core.training import find_profile
from app.errors import Forbidden, InvalidSpec, TaskConflict, TaskNotFound
from app.profiles import ModelProfile
from app.runtime.base import AlreadyExists, LogGone, Runtime, WorkloadState
from app.schemas.inference import DeploymentStatus, DeploymentTask, DeployRequest
from models.spec import MODEL_ARTIFACT_PATH, ServeSpec

log = logging.getLogger("mlops.deployments")
# A deleted deployment's last model-server output: serving-logs/<taskId>.log of the run it served.
SERVING_LOGS = "serving-logs"
ENGINE_VLLM = "vllm"
ENGINE_MODEL_SERVER = "mlops-model-server"


def predict_path(task_id: str) -> str:
    return f"/api/v1/inference/{task_id}/predict"


class DeploymentService:
    def __init__(self, runtime: Runtime, profiles: dict[str, ModelProfile], tracking: Tracking, refs: ClusterRefs):
        self.runtime = runtime
        self.profiles = profiles
        self.tracking = tracking
        self.refs = refs

    def plan(self, request: DeployRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        profile = find_profile(self.profiles, request.model_profile)
        if profile.inference is None:
            servers = ", ".join(sorted(n for n, p in self.profiles.items() if p.inference is not None))
            raise InvalidSpec(f"profile '{profile.name}' only trains; deploy with one of: {servers}",
                              field="modelProfile")
        self._check_model_source(request, profile)
        replicas = request.replicas or profile.inference.replicas
        llm = profile.llm
        spec = ServeSpec(
            task_id=request.task_id,
            model_id=request.model_id,
            model_uri=f"runs:/{request.mlflow_run_id}/{MODEL_ARTIFACT_PATH}" if request.mlflow_run_id else None,
            model_reference=request.model_reference,
            model_profile=profile.name,
            handler=profile.handler,
            max_rows=profile.inference.max_rows,
            max_request_bytes=profile.inference.max_request_bytes,
            use_gpu=request.use_gpu,
            served_model_name=request.model_id if llm else None,
            model_cache_dir=llm.model_cache.mount_path if llm else None,
        )
        normalized = request.model_dump(by_alias=True) | {"replicas": replicas}
        return normalized, [
            inference_deployment(spec, profile, request.use_gpu, replicas, normalized, self.refs),
            inference_service(spec, profile, normalized),
        ]

    def _check_model_source(self, request: DeployRequest, profile: ModelProfile) -> None:
        if (request.mlflow_run_id is None) == (request.model_reference is None):
            raise InvalidSpec("give exactly one of mlflowRunId or modelReference", field="mlflowRunId")
        reference = request.model_reference
        if reference is None:
            return
        if profile.llm is None:
            raise InvalidSpec(f"modelReference is only for language-model profiles; profile '{profile.name}' "
                              f"deploys an MLflow run (mlflowRunId)", field="modelReference")
        local_dir = self.runtime.allows_local_paths and Path(reference).expanduser().is_dir()
        if not (local_dir or profile.llm.allows_reference(reference)):
            allowed = ", ".join(profile.llm.allowed_model_references) or "none"
            raise Forbidden(f"modelReference '{reference}' is not allowed for profile '{profile.name}' "
                            f"(allowed: {allowed})", field="modelReference")

    async def check_run(self, request: DeployRequest) -> None:
        """The run must exist, have finished, and come from a compatible profile."""
        run = await run_blocking(self.tracking.run_info, request.mlflow_run_id)
        if run is None:
            raise TaskNotFound(f"MLflow run '{request.mlflow_run_id}' does not exist", field="mlflowRunId")
        if run.status != "FINISHED":
            raise TaskConflict(
                f"MLflow run '{run.run_id}' is {run.status}; only a FINISHED run has a model to deploy",
                field="mlflowRunId",
            )
        profile = self.profiles[request.model_profile]
        assert profile.inference is not None
        compatible = (request.model_profile, *profile.inference.accepts_runs_from)
        if run.profile and run.profile not in compatible:
            raise InvalidSpec(
                f"modelProfile '{request.model_profile}' cannot deploy a run of profile '{run.profile}' "
                f"(it deploys runs of: {', '.join(compatible)})",
                field="modelProfile",
            )

    async def create(self, request: DeployRequest) -> tuple[DeploymentTask, bool]:
        normalized, manifests = self.plan(request)
        existing = await run_blocking(self.runtime.get, KIND_INFERENCE, request.task_id)
        if existing is not None:
            check_same_request("inference", request.task_id, existing.request, normalized)
            return self._task(existing), False
        await self._check_model_id_free(request)
        if request.mlflow_run_id is not None:
            await self.check_run(request)
        try:
            state = await run_blocking(self.runtime.create, KIND_INFERENCE, request.task_id, manifests)
            created = True
        except AlreadyExists as exists:
            check_same_request("inference", request.task_id, exists.existing.request, normalized)
            state, created = exists.existing, False
        return self._task(state), created

    async def _check_model_id_free(self, request: DeployRequest) -> None:
        for state in await run_blocking(self.runtime.list, KIND_INFERENCE):
            if state.request.get("modelId") == request.model_id and state.task_id != request.task_id:
                raise TaskConflict(
                    f"modelId '{request.model_id}' is already served by task '{state.task_id}'",
                    field="modelId",
                )

    async def get(self, task_id: str) -> DeploymentTask:
        # An id no task can have is not looked up: on disk it could name a path ("..", too long),
        # on a cluster it makes an invalid label selector.
        state = await run_blocking(self.runtime.get, KIND_INFERENCE, task_id) if id_problem(task_id) is None else None
        if state is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        return self._task(state)

    async def list(self) -> list[DeploymentTask]:
        return [self._task(state) for state in await run_blocking(self.runtime.list, KIND_INFERENCE)]

    async def delete(self, task_id: str) -> None:
        state = await run_blocking(self.runtime.get, KIND_INFERENCE, task_id) if id_problem(task_id) is None else None
        if state is not None:
            await self._keep_last_log(state)
        if state is None or not await run_blocking(self.runtime.delete, KIND_INFERENCE, task_id):
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")

    async def _keep_last_log(self, state: WorkloadState) -> None:
        """The model server's output, kept as the artifact serving-logs/<taskId>.log of the run it
        served, before its pods go. A log that cannot be kept is said in the API's log; it never
        stops the deletion."""
        run_id = state.request.get("mlflowRunId")
        if not run_id:
            return  # a model by reference (a language model) has no run to keep it in
        try:
            text = await run_blocking(self.runtime.read_logs, KIND_INFERENCE, state.task_id, None)
            await run_blocking(self.tracking.keep_text, run_id, text, f"{SERVING_LOGS}/{state.task_id}.log")
        except LogGone:
            return
        except Exception as exc:  # MLflow or the cluster failing must not block a delete
            log.warning("could not keep the last log of deployment %s: %s", state.task_id, exc,
                        extra={"taskId": state.task_id})

    async def logs(self, task_id: str, tail: int | None) -> str:
        await self.get(task_id)
        return await run_blocking(self.runtime.read_logs, KIND_INFERENCE, task_id, tail)

    def _task(self, state: WorkloadState) -> DeploymentTask:
        request = state.request
        profile = self.profiles.get(request["modelProfile"])
        language_model = profile is not None and profile.llm is not None
        message = state.message
        if language_model and state.phase == DeploymentStatus.READY and not message:
            build = "CUDA" if request.get("useGpu") else "CPU"
            message = f"vLLM's OpenAI server ({build} build) serves '{request['modelId']}'"
        return DeploymentTask(
            task_id=state.task_id,
            model_id=request["modelId"],
            mlflow_run_id=request.get("mlflowRunId"),
            model_reference=request.get("modelReference"),
            model_profile=request["modelProfile"],
            use_gpu=request.get("useGpu", False),
            replicas=request.get("replicas", 1),
            ready_replicas=state.ready_replicas or 0,
            status=DeploymentStatus(state.phase),
            message=message,
            engine=ENGINE_VLLM if language_model else ENGINE_MODEL_SERVER,
            service_name=inference_name(request["modelId"]),
            predict_path=predict_path(state.task_id),
            created_at=state.created_at,
        )
