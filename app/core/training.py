"""Training tasks: validate a request against its profile, build its Job, hand it to the runtime."""

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from app.core.blocking import run_blocking
from app.core.log_streams import LogStreams
from app.core.manifests import KIND_TRAINING, ClusterRefs, training_job
from app.core.names import id_problem, job_name
from app.core.pages import ListQuery, Page, page_of
from app.core.requests import check_same_request
from app.core.tracking import RunOutcome, Tracking
from app.errors import DependencyUnavailable, Forbidden, InvalidSpec, TaskNotFound
from app.profiles import ModelProfile
from app.runtime.base import AlreadyExists, LogGone, Runtime, WorkloadState
from app.schemas.training import TrainingProgress, TrainingStatus, TrainingTask, TrainRequest
from models.spec import TRAINER_LOG_ARTIFACT, TrainSpec, dataset_scheme

log = logging.getLogger(__name__)

DEFAULT_LOG_FOLLOWERS = 64
PROGRESS_METRICS = {"step": "progress_step", "total_steps": "progress_total_steps",
                    "epoch": "progress_epoch", "total_epochs": "progress_total_epochs"}


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


def progress_of(metrics: dict[str, float]) -> TrainingProgress | None:
    found = {field: int(metrics[name]) for field, name in PROGRESS_METRICS.items() if name in metrics}
    return TrainingProgress(**found, metrics=model_metrics(metrics)) if found else None


def model_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a person reads (a loss, a score), without the progress counters."""
    return {name: value for name, value in sorted(metrics.items()) if not name.startswith("progress_")}


def find_profile(profiles: dict[str, ModelProfile], name: str, field: str = "modelProfile") -> ModelProfile:
    profile = profiles.get(name)
    if profile is None:
        raise InvalidSpec(f"unknown model profile '{name}' (known: {', '.join(sorted(profiles))})", field=field)
    return profile


class TrainingService:
    def __init__(self, runtime: Runtime, profiles: dict[str, ModelProfile], tracking: Tracking, refs: ClusterRefs,
                 log_streams: LogStreams | None = None):
        self.runtime = runtime
        self.log_streams = log_streams or LogStreams(DEFAULT_LOG_FOLLOWERS)
        self.profiles = profiles
        self.tracking = tracking
        self.refs = refs
        # Run ids never change once found (None: an ended task that made none), nor a finished run's
        # outcome; keyed by the task's incarnation.
        self._run_ids: dict[str, str | None] = {}
        self._outcomes: dict[str, RunOutcome] = {}

    def plan(self, request: TrainRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The normalized request and the Job for it; raise InvalidSpec/Forbidden, change nothing."""
        profile = find_profile(self.profiles, request.model_profile)
        if profile.trainer is None:
            trainers = ", ".join(sorted(n for n, p in self.profiles.items() if p.trainer is not None))
            raise InvalidSpec(f"profile '{profile.name}' only serves models; train with one of: {trainers}",
                              field="modelProfile")
        self._check_base_model(request, profile)
        hyperparameters, problems = profile.resolve_hyperparameters(request.hyperparameters)
        if problems:
            name, problem = problems[0]
            raise InvalidSpec(f"hyperparameters.{name} {problem}", field=f"hyperparameters.{name}")
        if profile.llm is not None:
            self._check_language_model_request(request, hyperparameters)
        image = request.trainer_image or profile.trainer.image
        if not profile.trainer.allows_image(image):
            allowed = ", ".join((profile.trainer.image, *profile.trainer.allowed_images))
            raise Forbidden(
                f"trainerImage '{image}' is not allowed for profile '{profile.name}' (allowed: {allowed})",
                field="trainerImage",
            )
        dataset_path = self._dataset_path(request.dataset_path, profile)
        spec = TrainSpec(
            task_id=request.task_id,
            experiment_name=request.experiment_name,
            model_profile=profile.name,
            handler=profile.handler,
            dataset_path=dataset_path,
            target_column=request.target_column,
            custom_model_name=request.custom_model_name,
            initial_model_uri=request.initial_model_file_path,
            use_gpu=request.use_gpu,
            hyperparameters=hyperparameters,
        )
        normalized = request.model_dump(by_alias=True) | {
            "hyperparameters": hyperparameters,
            "trainerImage": image,
            "datasetPath": dataset_path,
        }
        return normalized, [training_job(spec, profile, image, normalized, self.refs)]

    def _check_base_model(self, request: TrainRequest, profile: ModelProfile) -> None:
        """A language-model profile fine-tunes the model named by initialModelFilePath."""
        if profile.llm is None:
            return
        base = request.initial_model_file_path
        allowed = ", ".join(profile.llm.allowed_model_references) or "none"
        if base is None:
            raise InvalidSpec(f"initialModelFilePath must name the base model to fine-tune (allowed: {allowed})",
                              field="initialModelFilePath")
        local_dir = self.runtime.allows_local_paths and Path(base).expanduser().is_dir()
        if not (local_dir or profile.llm.allows_reference(base)):
            raise Forbidden(f"base model '{base}' is not allowed for profile '{profile.name}' (allowed: {allowed})",
                            field="initialModelFilePath")

    @staticmethod
    def _check_language_model_request(request: TrainRequest, hyperparameters: dict[str, Any]) -> None:
        """What the LoRA trainer would refuse only after its pod started, refused now."""
        if request.target_column is not None:
            raise InvalidSpec("targetColumn is for tabular data; a language-model dataset is JSONL with "
                              "prompt/completion or messages", field="targetColumn")
        if request.custom_model_name and hyperparameters.get("mergeAdapter") is False:
            raise InvalidSpec("customModelName registers the merged model, which mergeAdapter=false does not make; "
                              "drop customModelName or set mergeAdapter to true", field="customModelName")

    def _dataset_path(self, path: str, profile: ModelProfile) -> str:
        scheme = dataset_scheme(path)
        if scheme not in profile.dataset_schemes:
            allowed = ", ".join(profile.dataset_schemes)
            raise InvalidSpec(
                f"datasetPath scheme '{scheme}' is not allowed for profile '{profile.name}' (allowed: {allowed})",
                field="datasetPath",
            )
        if scheme in ("local", "file"):
            if not self.runtime.allows_local_paths:
                raise InvalidSpec("datasetPath must be an s3:// URI on this runtime", field="datasetPath")
            local = Path(path.removeprefix("file://")).expanduser().resolve()
            if not local.is_file():
                raise InvalidSpec(f"datasetPath: no such file: {local}", field="datasetPath")
            return str(local) if scheme == "local" else f"file://{local}"
        return path

    async def create(self, request: TrainRequest) -> tuple[TrainingTask, bool]:
        """Create the task, or return it if the same request made it before; True when created."""
        normalized, manifests = self.plan(request)
        try:
            state = await run_blocking(self.runtime.create, KIND_TRAINING, request.task_id, manifests)
            created = True
        except AlreadyExists as exists:
            check_same_request("training", request.task_id, exists.existing.request, normalized)
            state, created = exists.existing, False
        return await self._task(state), created

    async def get(self, task_id: str) -> TrainingTask:
        # An id no task can have is not looked up: on disk it could name a path ("..", too long),
        # on a cluster it makes an invalid label selector.
        state = await run_blocking(self.runtime.get, KIND_TRAINING, task_id) if id_problem(task_id) is None else None
        if state is None:
            raise TaskNotFound(f"no training task '{task_id}'", field="taskId")
        return await self._task(state)

    async def list(self, query: ListQuery = ListQuery()) -> tuple[list[TrainingTask], Page]:
        """A page of the tasks (all of them without a limit), in task-id order. Only the page's
        tasks are read from MLflow."""
        if query.profile is not None:
            find_profile(self.profiles, query.profile, field="profile")
        states = await run_blocking(self.runtime.list, KIND_TRAINING)
        page = page_of(states, query, lambda state: state.request.get("modelProfile"))
        return [await self._task(state) for state in page.states], page

    async def delete(self, task_id: str) -> None:
        if id_problem(task_id) is not None or not await run_blocking(self.runtime.delete, KIND_TRAINING, task_id):
            raise TaskNotFound(f"no training task '{task_id}'", field="taskId")

    async def logs(self, task_id: str, tail: int | None) -> str:
        task = await self.get(task_id)
        try:
            return await run_blocking(self.runtime.read_logs, KIND_TRAINING, task_id, tail)
        except LogGone as gone:
            return await self._kept_log(task, str(gone), tail)

    async def follow_logs(self, task_id: str, tail: int | None) -> AsyncIterator[bytes]:
        task = await self.get(task_id)
        if task.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            # An ended task's log does not grow: read it whole, from wherever it is kept now.
            return _once((await self.logs(task_id, tail)).encode())
        return self.log_streams.admit(self.runtime.follow_logs(KIND_TRAINING, task_id, tail))

    async def _kept_log(self, task: TrainingTask, gone: str, tail: int | None) -> str:
        """The trainer's log kept with its run (script/train.py), once its pods are gone."""
        text = None
        if task.mlflow_run_id:
            text = await run_blocking(self.tracking.read_text_artifact, task.mlflow_run_id, TRAINER_LOG_ARTIFACT)
        if text is None:
            return f"{gone}; no log was kept with its MLflow run\n"
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail is not None else text

    async def _run_id(self, state: WorkloadState) -> str | None:
        """The task's MLflow run, looked up until found; for an ended task, until MLflow answers
        (its trainer has finished: a run it did not make by then never comes), so that a list of a
        thousand ended tasks does not ask MLflow again on every read."""
        if state.uid in self._run_ids:
            return self._run_ids[state.uid]
        if state.phase == TrainingStatus.PENDING:
            return None
        try:
            run_id = await run_blocking(self.tracking.find_task_run, state.request["experimentName"], state.task_id)
        except DependencyUnavailable as exc:  # a status read must not fail because MLflow hiccups
            log.warning("looking up the MLflow run of task %s failed: %s", state.task_id, exc)
            return None
        if run_id is not None or state.phase in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            self._run_ids[state.uid] = run_id
        return run_id

    async def _task(self, state: WorkloadState) -> TrainingTask:
        request = state.request
        run_id = await self._run_id(state)
        progress = outcome = None
        if run_id and state.phase == TrainingStatus.RUNNING:
            progress = progress_of(await run_blocking(self.tracking.latest_metrics, run_id))
        if run_id and state.phase == TrainingStatus.SUCCEEDED:
            outcome = self._outcomes.get(state.uid)
            if outcome is None:
                outcome = await run_blocking(self.tracking.run_outcome, run_id, request.get("customModelName"))
                if outcome is not None:
                    self._outcomes[state.uid] = outcome
        return TrainingTask(
            progress=progress,
            metrics=model_metrics(outcome.metrics) if outcome else None,
            registered_model_version=outcome.registered_version if outcome else None,
            mlflow_run_url=outcome.url if outcome else None,
            task_id=state.task_id,
            status=TrainingStatus(state.phase),
            message=state.message,
            experiment_name=request["experimentName"],
            model_profile=request["modelProfile"],
            custom_model_name=request.get("customModelName"),
            dataset_path=request["datasetPath"],
            target_column=request.get("targetColumn"),
            use_gpu=request.get("useGpu", False),
            trainer_image=request["trainerImage"],
            hyperparameters=request.get("hyperparameters", {}),
            job_name=job_name(state.task_id),
            created_at=state.created_at,
            start_time=state.start_time,
            completion_time=state.completion_time,
            mlflow_run_id=run_id,
        )
