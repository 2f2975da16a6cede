"""Inference tasks: check the MLflow run, build the Deployment and Service, hand them to the runtime."""

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.blocking import run_blocking
from app.core.manifests import (
    KIND_INFERENCE,
    ClusterRefs,
    inference_autoscaler,
    inference_deployment,
    inference_service,
)
from app.core.names import id_problem, inference_name
from app.core.pages import ListQuery, Page, page_of
from app.core.requests import check_same_request
from app.core.revisions import AutoAbort, CanaryRecord, Rollout, first_rollout, revision_states, rollout_of_state
from app.core.tracking import Tracking
from app.core.training import find_profile
from app.dataplane.revision_stats import RevisionStats
from app.errors import Forbidden, InvalidSpec, TaskConflict, TaskNotFound
from app.profiles import ModelProfile
from app.runtime.base import AlreadyExists, LogGone, Runtime, WorkloadState
from app.schemas.inference import (
    AutoAbortRequest,
    CanaryPromotion,
    CanaryRequest,
    CanaryStatus,
    CanaryWeight,
    DeploymentStatus,
    DeploymentTask,
    DeploymentUpdate,
    DeployRequest,
    ModelChoice,
    RevisionList,
    RevisionTraffic,
    RollbackRequest,
    ServedModel,
)
from models.spec import MODEL_ARTIFACT_PATH, ServeSpec

log = logging.getLogger("mlops.deployments")
# A deleted deployment's last model-server output: serving-logs/<taskId>.log of the run it served.
SERVING_LOGS = "serving-logs"
ENGINE_VLLM = "vllm"
ENGINE_MODEL_SERVER = "mlops-model-server"


def predict_path(task_id: str) -> str:
    return f"/api/v1/inference/{task_id}/predict"


class DeploymentService:
    def __init__(self, runtime: Runtime, profiles: dict[str, ModelProfile], tracking: Tracking, refs: ClusterRefs,
                 revisions: RevisionStats | None = None):
        self.runtime = runtime
        self.profiles = profiles
        self.tracking = tracking
        self.refs = refs
        # What each revision answered lately (the data plane records it): the status's traffic.
        self.revision_stats = revisions or RevisionStats()

    def _serving_profile(self, name: str) -> ModelProfile:
        profile = find_profile(self.profiles, name)
        if profile.inference is None:
            servers = ", ".join(sorted(n for n, p in self.profiles.items() if p.inference is not None))
            raise InvalidSpec(f"profile '{profile.name}' only trains; deploy with one of: {servers}",
                              field="modelProfile")
        return profile

    def _manifests(self, request: dict[str, Any], profile: ModelProfile, rollout: Rollout) -> list[dict[str, Any]]:
        """The stable revision's Deployment and Service; the canary's, while one runs; the
        HorizontalPodAutoscaler, when the replicas follow the load. A runtime makes exactly these
        (and removes a canary or an autoscaler that is not among them)."""
        stable = rollout.find(rollout.revision)
        assert stable is not None
        spec = self._serve_spec(request, profile, stable.model)
        use_gpu = request.get("useGpu", False)
        objects = [
            inference_deployment(spec, profile, use_gpu, rollout.replicas, request, self.refs, rollout.as_annotation()),
            inference_service(spec, profile, request),
        ]
        if rollout.canary is not None:
            canary = rollout.find(rollout.canary.revision)
            assert canary is not None
            canary_spec = self._serve_spec(request, profile, canary.model)
            objects += [
                inference_deployment(canary_spec, profile, use_gpu, 1, request, self.refs,
                                     canary_revision=canary.revision),
                inference_service(canary_spec, profile, request, canary=True),
            ]
        if rollout.autoscaling is not None:
            objects.append(inference_autoscaler(spec, profile, request, rollout.autoscaling))
        return objects

    def _serve_spec(self, request: dict[str, Any], profile: ModelProfile, model: ServedModel) -> ServeSpec:
        assert profile.inference is not None
        if model.model_name and model.model_version:
            model_uri = f"models:/{model.model_name}/{model.model_version}"
        elif model.mlflow_run_id:
            model_uri = f"runs:/{model.mlflow_run_id}/{MODEL_ARTIFACT_PATH}"
        else:
            model_uri = None
        llm = profile.llm
        return ServeSpec(
            task_id=request["taskId"],
            model_id=request["modelId"],
            model_uri=model_uri,
            model_reference=model.model_reference,
            model_profile=profile.name,
            handler=profile.handler,
            max_rows=profile.inference.max_rows,
            max_request_bytes=profile.inference.max_request_bytes,
            use_gpu=request.get("useGpu", False),
            served_model_name=request["modelId"] if llm else None,
            model_cache_dir=llm.model_cache.mount_path if llm else None,
        )

    async def plan(self, request: DeployRequest, check_runs: bool = True
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The request as it is kept (for the idempotency rule) and the objects it makes. A dry run
        skips asking MLflow about a run (a registered model's alias is still resolved)."""
        profile = self._serving_profile(request.model_profile)
        model = await self.resolve(request, profile, check_runs=check_runs)
        replicas = request.replicas or profile.inference.replicas  # type: ignore[union-attr]
        normalized = request.model_dump(by_alias=True) | {"replicas": replicas}
        return normalized, self._manifests(normalized, profile, first_rollout(model, replicas))

    async def resolve(self, choice: ModelChoice, profile: ModelProfile, check_runs: bool = True) -> ServedModel:
        """The model `choice` names, checked and resolved (a registry alias becomes its version)."""
        sources = [name for name, value in (("mlflowRunId", choice.mlflow_run_id), ("modelName", choice.model_name),
                                           ("modelReference", choice.model_reference)) if value is not None]
        if len(sources) != 1:
            raise InvalidSpec("give exactly one of mlflowRunId, modelName (with modelVersion or modelAlias) or "
                              "modelReference", field=sources[0] if sources else "mlflowRunId")
        if choice.model_name is None and (choice.model_version or choice.model_alias):
            raise InvalidSpec("modelVersion and modelAlias name a version of modelName; give modelName",
                              field="modelName")
        if choice.model_reference is not None:
            self._check_reference(choice.model_reference, profile)
            return ServedModel(model_reference=choice.model_reference)
        if choice.mlflow_run_id is not None:
            if check_runs:
                await self.check_run(choice.mlflow_run_id, profile)
            return ServedModel(mlflow_run_id=choice.mlflow_run_id)
        assert choice.model_name is not None
        if (choice.model_version is None) == (choice.model_alias is None):
            raise InvalidSpec("give exactly one of modelVersion or modelAlias with modelName",
                              field="modelVersion")
        found = await run_blocking(self.tracking.model_version, choice.model_name, choice.model_version,
                                   choice.model_alias)
        if found is None:
            which = (f"version {choice.model_version}" if choice.model_version
                     else f"a version with the alias '{choice.model_alias}'")
            raise TaskNotFound(f"registered model '{choice.model_name}' has no {which}",
                               field="modelVersion" if choice.model_version else "modelAlias")
        if found.run_id and check_runs:
            await self.check_run(found.run_id, profile, field="modelName")
        return ServedModel(mlflow_run_id=found.run_id, model_name=found.name, model_version=found.version,
                           model_alias=choice.model_alias)

    def _check_reference(self, reference: str, profile: ModelProfile) -> None:
        if profile.llm is None:
            raise InvalidSpec(f"modelReference is only for language-model profiles; profile '{profile.name}' "
                              f"deploys an MLflow run (mlflowRunId) or a registered model (modelName)",
                              field="modelReference")
        local_dir = self.runtime.allows_local_paths and Path(reference).expanduser().is_dir()
        if not (local_dir or profile.llm.allows_reference(reference)):
            allowed = ", ".join(profile.llm.allowed_model_references) or "none"
            raise Forbidden(f"modelReference '{reference}' is not allowed for profile '{profile.name}' "
                            f"(allowed: {allowed})", field="modelReference")

    async def check_run(self, run_id: str, profile: ModelProfile, field: str = "mlflowRunId") -> None:
        """The run must exist, have finished, and come from a compatible profile."""
        run = await run_blocking(self.tracking.run_info, run_id)
        if run is None:
            raise TaskNotFound(f"MLflow run '{run_id}' does not exist", field=field)
        if run.status != "FINISHED":
            raise TaskConflict(
                f"MLflow run '{run.run_id}' is {run.status}; only a FINISHED run has a model to deploy", field=field
            )
        assert profile.inference is not None
        compatible = (profile.name, *profile.inference.accepts_runs_from)
        if run.profile and run.profile not in compatible:
            raise InvalidSpec(
                f"modelProfile '{profile.name}' cannot deploy a run of profile '{run.profile}' "
                f"(it deploys runs of: {', '.join(compatible)})",
                field="modelProfile",
            )

    async def create(self, request: DeployRequest) -> tuple[DeploymentTask, bool]:
        self._serving_profile(request.model_profile)
        existing = await run_blocking(self.runtime.get, KIND_INFERENCE, request.task_id)
        if existing is not None:
            replicas = request.replicas or self.profiles[request.model_profile].inference.replicas  # type: ignore[union-attr]
            check_same_request("inference", request.task_id, existing.request,
                               request.model_dump(by_alias=True) | {"replicas": replicas})
            return self._task(existing), False
        await self._check_model_id_free(request)
        normalized, manifests = await self.plan(request)
        try:
            state = await run_blocking(self.runtime.create, KIND_INFERENCE, request.task_id, manifests)
            created = True
        except AlreadyExists as exists:
            check_same_request("inference", request.task_id, exists.existing.request, normalized)
            state, created = exists.existing, False
        return self._task(state), created

    # -- day 2: update, revisions, rollback --------------------------------------------------------

    async def _existing(self, task_id: str) -> WorkloadState:
        """The deployment as a change decides on it: read from the cluster, not a cache."""
        state = (await run_blocking(self.runtime.get, KIND_INFERENCE, task_id, True)
                 if id_problem(task_id) is None else None)
        if state is None:
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")
        return state

    async def update(self, task_id: str, change: DeploymentUpdate, dry_run: bool = False
                     ) -> DeploymentTask | list[dict[str, Any]]:
        """A new model becomes a new revision, rolled out with no failed request; `replicas` scales.
        With dry_run, the objects the update would make, and nothing changes."""
        if change.replicas is not None and change.autoscaling is not None:
            raise InvalidSpec("give replicas (a fixed number) or autoscaling, not both", field="autoscaling")
        if not change.model_fields_set - {"promote_alias"} and change.promote_alias is None:
            raise InvalidSpec("nothing to change: give a model (mlflowRunId, modelName with modelVersion or "
                              "modelAlias, or modelReference), replicas, autoscaling or promoteAlias",
                              field="replicas")
        state = await self._existing(task_id)
        profile = self._serving_profile(state.request["modelProfile"])
        rollout = rollout_of_state(state)
        if change.chosen():
            model = await self.resolve(change, profile)
            rollout = rollout.with_revision(model, "updated")
        if change.replicas is not None:
            rollout = rollout.model_copy(update={"replicas": change.replicas, "autoscaling": None})
        if "autoscaling" in change.model_fields_set:
            autoscaling = change.autoscaling.model_dump(mode="json") if change.autoscaling else None
            replicas = change.autoscaling.min_replicas if change.autoscaling else rollout.replicas
            rollout = rollout.model_copy(update={"autoscaling": autoscaling, "replicas": replicas})
        if change.promote_alias is not None:
            rollout = await self._promotion(rollout, change.promote_alias, dry_run)
        return await self._apply(state, profile, rollout, dry_run)

    async def rollback(self, task_id: str, body: RollbackRequest, dry_run: bool = False
                       ) -> DeploymentTask | list[dict[str, Any]]:
        """A new revision serving an earlier revision's model (default: the one before the newest).
        An alias the newest revision promoted goes back to the version it named before."""
        state = await self._existing(task_id)
        profile = self._serving_profile(state.request["modelProfile"])
        rollout = rollout_of_state(state)
        if body.revision is None:
            previous = rollout.previous()
            if previous is None:
                raise TaskNotFound(f"deployment '{task_id}' has no revision before {rollout.revision}",
                                   field="revision")
            target = previous
        else:
            found = rollout.find(body.revision)
            if found is None:
                kept = ", ".join(str(record.revision) for record in rollout.history)
                raise TaskNotFound(f"deployment '{task_id}' has no revision {body.revision} (kept: {kept})",
                                   field="revision")
            target = found
        if rollout.canary is not None:
            raise TaskConflict(f"deployment '{task_id}' runs a canary (revision {rollout.canary.revision}); "
                               "promote it or delete it before a rollback", field="taskId")
        if target.revision == rollout.revision:
            raise TaskConflict(f"revision {target.revision} is already the newest revision of '{task_id}'",
                               field="revision")
        undone = rollout.newest
        rollout = rollout.with_revision(target.model, f"rolled back to {target.revision}")
        if body.promote_alias is not None:
            rollout = await self._promotion(rollout, body.promote_alias, dry_run)
        elif undone.promoted_alias and undone.model.model_name and not dry_run:
            # The alias the undone revision moved goes back to where it was.
            await run_blocking(self.tracking.set_alias, undone.model.model_name, undone.promoted_alias,
                               undone.alias_was)
        return await self._apply(state, profile, rollout, dry_run)

    async def _promotion(self, rollout: Rollout, alias: str, dry_run: bool) -> Rollout:
        """Point `alias` of the newest revision's registered model at its version."""
        model = rollout.newest.model
        if not (model.model_name and model.model_version):
            raise InvalidSpec(f"promoteAlias needs a registered model: revision {rollout.revision} serves "
                              f"{'a model reference' if model.model_reference else 'a run'}, not a model version "
                              f"(deploy with modelName)", field="promoteAlias")
        before = await run_blocking(self.tracking.model_version, model.model_name, None, alias)
        if not dry_run:
            await run_blocking(self.tracking.set_alias, model.model_name, alias, model.model_version)
        return rollout.replaced(rollout.newest.model_copy(update={"promoted_alias": alias,
                                                                 "alias_was": before.version if before else None}))

    async def _apply(self, state: WorkloadState, profile: ModelProfile, rollout: Rollout, dry_run: bool
                     ) -> DeploymentTask | list[dict[str, Any]]:
        manifests = self._manifests(state.request, profile, rollout)
        if dry_run:
            return manifests
        updated = await run_blocking(self.runtime.update, KIND_INFERENCE, state.task_id, manifests, state)
        return self._task(updated)

    # -- canaries ----------------------------------------------------------------------------------

    async def start_canary(self, task_id: str, body: CanaryRequest, dry_run: bool = False
                           ) -> DeploymentTask | list[dict[str, Any]]:
        """A new revision beside the serving one, taking body.trafficPercent of the predicts."""
        state = await self._existing(task_id)
        profile = self._serving_profile(state.request["modelProfile"])
        rollout = rollout_of_state(state)
        if rollout.canary is not None:
            raise TaskConflict(f"deployment '{task_id}' already runs a canary (revision {rollout.canary.revision}); "
                               "change its weight, promote it or delete it first", field="taskId")
        model = await self.resolve(body, profile)
        record = rollout.new_record(model, "canary")
        canary = CanaryRecord(revision=record.revision, weight=body.traffic_percent, started_at=datetime.now(UTC),
                              auto_abort=self._auto_abort(body.auto_abort, profile))
        rollout = rollout.model_copy(update={"canary": canary})
        rollout = rollout.model_copy(update={"history": rollout.keep([*rollout.history, record])})
        return await self._apply(state, profile, rollout, dry_run)

    @staticmethod
    def _auto_abort(asked: bool | AutoAbortRequest, profile: ModelProfile) -> AutoAbort | None:
        if asked is False:
            return None
        assert profile.inference is not None
        defaults = profile.inference.canary_auto_abort.model_dump()
        given = asked.model_dump(exclude_none=True) if isinstance(asked, AutoAbortRequest) else {}
        return AutoAbort.model_validate(defaults | given)

    async def _with_canary(self, task_id: str) -> tuple[WorkloadState, ModelProfile, Rollout, CanaryRecord]:
        state = await self._existing(task_id)
        rollout = rollout_of_state(state)
        if rollout.canary is None:
            raise TaskNotFound(f"deployment '{task_id}' runs no canary", field="taskId")
        return state, self._serving_profile(state.request["modelProfile"]), rollout, rollout.canary

    async def reweight_canary(self, task_id: str, body: CanaryWeight, dry_run: bool = False
                              ) -> DeploymentTask | list[dict[str, Any]]:
        state, profile, rollout, canary = await self._with_canary(task_id)
        canary = canary.model_copy(update={"weight": body.traffic_percent})
        return await self._apply(state, profile, rollout.model_copy(update={"canary": canary}), dry_run)

    async def promote_canary(self, task_id: str, body: CanaryPromotion, dry_run: bool = False
                             ) -> DeploymentTask | list[dict[str, Any]]:
        """The canary's revision becomes the only one (its model servers are ready already, so the
        stable ones leave rotation at once and drain); the alias moves onto its version."""
        state, profile, rollout, canary = await self._with_canary(task_id)
        rollout = rollout.model_copy(update={"revision": canary.revision, "canary": None})
        model = rollout.newest.model
        if body.promote_alias and model.model_name and model.model_version:
            rollout = await self._promotion(rollout, body.promote_alias, dry_run)
        return await self._apply(state, profile, rollout, dry_run)

    async def abort_canary(self, task_id: str, reason: str = "by request", dry_run: bool = False
                           ) -> DeploymentTask | list[dict[str, Any]]:
        """The canary's model servers leave rotation and stop; the serving revision takes every call."""
        state, profile, rollout, canary = await self._with_canary(task_id)
        aborted = rollout.find(canary.revision)
        assert aborted is not None
        rollout = rollout.replaced(aborted.model_copy(update={"aborted": reason})).model_copy(update={"canary": None})
        return await self._apply(state, profile, rollout, dry_run)

    def traffic(self, task_id: str, rollout: Rollout) -> list[RevisionTraffic]:
        """What the stable revision and the canary answered over the canary's window (60 s without)."""
        canary = rollout.canary
        window = canary.auto_abort.window_seconds if canary and canary.auto_abort else 60.0
        weights = {rollout.revision: 100 - (canary.weight if canary else 0)}
        if canary is not None:
            weights[canary.revision] = canary.weight
        items = []
        for revision, weight in weights.items():
            summary = self.revision_stats.summary(task_id, revision, window)
            items.append(RevisionTraffic(revision=revision, weight=weight, requests=summary.requests,
                                         error_ratio=round(summary.error_ratio, 4), p99_seconds=summary.p99_seconds,
                                         window_seconds=window))
        return items

    async def revisions(self, task_id: str) -> RevisionList:
        state = await self._existing(task_id)
        return RevisionList(task_id=task_id, items=revision_states(state, rollout_of_state(state)))

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

    async def list(self, query: ListQuery = ListQuery()) -> tuple[list[DeploymentTask], Page]:
        """A page of the deployments (all of them without a limit), in task-id order."""
        if query.profile is not None:
            find_profile(self.profiles, query.profile, field="profile")
        states = await run_blocking(self.runtime.list, KIND_INFERENCE)
        page = page_of(states, query, lambda state: state.request.get("modelProfile"))
        return [self._task(state) for state in page.states], page

    async def delete(self, task_id: str) -> None:
        # Read from the cluster, not a cache: a deployment another replica made a moment ago is deleted too.
        state = (await run_blocking(self.runtime.get, KIND_INFERENCE, task_id, True)
                 if id_problem(task_id) is None else None)
        if state is not None:
            await self._keep_last_log(state)
        if state is None or not await run_blocking(self.runtime.delete, KIND_INFERENCE, task_id):
            raise TaskNotFound(f"no deployment '{task_id}'", field="taskId")

    async def _keep_last_log(self, state: WorkloadState) -> None:
        """The model server's output, kept as the artifact serving-logs/<taskId>.log of the run it
        served, before its pods go. A log that cannot be kept is said in the API's log; it never
        stops the deletion."""
        run_id = rollout_of_state(state).newest.model.mlflow_run_id
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
        rollout = rollout_of_state(state)
        model = rollout.newest.model
        message = state.message
        if language_model and state.phase == DeploymentStatus.READY and not message:
            build = "CUDA" if request.get("useGpu") else "CPU"
            message = f"vLLM's OpenAI server ({build} build) serves '{request['modelId']}'"
        if state.serving_revision is not None and state.serving_revision != rollout.revision:
            doing = (f"cannot start: {state.revision_problem}" if state.revision_problem
                     else "is starting")
            message = f"revision {rollout.revision} {doing}; revision {state.serving_revision} serves"
        canary = None
        if rollout.canary is not None and (canary_record := rollout.find(rollout.canary.revision)) is not None:
            canary = CanaryStatus(revision=rollout.canary.revision, model=canary_record.model,
                                  weight=rollout.canary.weight, ready_replicas=state.canary_ready_replicas or 0,
                                  message=state.canary_problem, started_at=rollout.canary.started_at,
                                  auto_abort=rollout.canary.auto_abort.model_dump(mode="json")
                                  if rollout.canary.auto_abort else None)
        return DeploymentTask(
            task_id=state.task_id,
            model_id=request["modelId"],
            canary=canary,
            traffic=self.traffic(state.task_id, rollout),
            autoscaling=rollout.autoscaling,
            mlflow_run_id=model.mlflow_run_id,
            model_reference=model.model_reference,
            model=model,
            revision=rollout.revision,
            serving_revision=state.serving_revision,
            model_profile=request["modelProfile"],
            use_gpu=request.get("useGpu", False),
            replicas=rollout.replicas,
            ready_replicas=state.ready_replicas or 0,
            status=DeploymentStatus(state.phase),
            message=message,
            engine=ENGINE_VLLM if language_model else ENGINE_MODEL_SERVER,
            service_name=inference_name(request["modelId"]),
            predict_path=predict_path(state.task_id),
            created_at=state.created_at,
        )
