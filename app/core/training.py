"""Training tasks: validate a request against its profile, build its Job, hand it to the runtime."""

import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.core.blocking import run_blocking
from app.core.log_streams import LogStreams
from app.core.manifests import KIND_TRAINING, ClusterRefs, training_job
from app.core.names import id_problem, job_name
from app.core.pages import ListQuery, Page, page_of
from app.core.requests import check_same_request
from app.core.tracking import TaskRun, Tracking
from app.errors import DependencyUnavailable, Forbidden, InvalidSpec, TaskNotFound
from app.profiles import ModelProfile
from app.runtime.base import AlreadyExists, LogGone, Runtime, WorkloadState
from app.schemas.training import TrainingProgress, TrainingStatus, TrainingTask, TrainRequest
from models.spec import TRAINER_LOG_ARTIFACT, TrainSpec, dataset_scheme

log = logging.getLogger(__name__)

# Named here because inside TrainingService `list` is its method.
States = list[WorkloadState]
Tasks = list[TrainingTask]
# How long before its task's creation a run may have started: the cluster's clock and the trainer
# pod's (which stamps the run) may differ.
CLOCK_MARGIN = timedelta(hours=1)

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
        # What never changes once known, by task id with the incarnation (uid) it is true of: an
        # ended task's run (None: it made none) and the version a succeeded task registered. A task
        # made again under its id replaces the entry; a deleted one's goes with it.
        self._ended_runs: dict[str, tuple[str, TaskRun | None]] = {}
        self._versions: dict[str, tuple[str, str | None]] = {}

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
        return (await self._tasks([state]))[0], created

    async def get(self, task_id: str) -> TrainingTask:
        # An id no task can have is not looked up: on disk it could name a path ("..", too long),
        # on a cluster it makes an invalid label selector.
        state = await run_blocking(self.runtime.get, KIND_TRAINING, task_id) if id_problem(task_id) is None else None
        if state is None:
            raise TaskNotFound(f"no training task '{task_id}'", field="taskId")
        return (await self._tasks([state]))[0]

    async def list(self, query: ListQuery = ListQuery()) -> tuple[list[TrainingTask], Page]:
        """A page of the tasks (all of them without a limit), in task-id order. Only the page's
        tasks are read from MLflow."""
        if query.profile is not None:
            find_profile(self.profiles, query.profile, field="profile")
        states = await run_blocking(self.runtime.list, KIND_TRAINING)
        page = page_of(states, query, lambda state: state.request.get("modelProfile"))
        return await self._tasks(page.states), page

    async def delete(self, task_id: str) -> None:
        if id_problem(task_id) is not None or not await run_blocking(self.runtime.delete, KIND_TRAINING, task_id):
            raise TaskNotFound(f"no training task '{task_id}'", field="taskId")
        self._ended_runs.pop(task_id, None)
        self._versions.pop(task_id, None)

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

    async def _tasks(self, states: States) -> Tasks:
        """The tasks as the API answers them, with what MLflow knows of their runs: one search per
        experiment and one call per registered model name for the whole list, not calls per task."""
        runs = await self._runs_of(states)
        versions = await self._versions_of(states, runs)
        return [self._task(state, runs.get(state.uid), versions.get(state.uid)) for state in states]

    async def _runs_of(self, states: States) -> dict[str, TaskRun | None]:
        """Each started task's run by incarnation (uid). An ended task's is kept once MLflow has
        answered, found or not (its trainer has finished: a run it did not make by then never
        comes); a running one's is asked each time, for its progress. MLflow being down is logged,
        not raised: a status read must not fail because MLflow hiccups."""
        runs = {s.uid: kept[1] for s in states if (kept := self._ended_runs.get(s.task_id)) and kept[0] == s.uid}
        by_experiment: dict[str, States] = defaultdict(list)
        for state in states:
            if state.phase != TrainingStatus.PENDING and state.uid not in runs:
                by_experiment[state.request["experimentName"]].append(state)
        for experiment, group in by_experiment.items():
            created = [s.created_at for s in group]
            since = None if None in created else int((min(created) - CLOCK_MARGIN).timestamp() * 1000)
            try:
                found = await run_blocking(self.tracking.task_runs, experiment, [s.task_id for s in group], since)
            except DependencyUnavailable as exc:
                log.warning("looking up the MLflow runs of %d tasks of experiment %r failed: %s", len(group),
                            experiment, exc)
                continue
            for state in group:
                runs[state.uid] = found.get(state.task_id)
                if state.phase in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
                    self._ended_runs[state.task_id] = (state.uid, runs[state.uid])
        return runs

    async def _versions_of(self, states: States, runs: dict[str, TaskRun | None]) -> dict[str, str | None]:
        """The version each succeeded task registered under its customModelName, kept once known."""
        versions = {s.uid: kept[1] for s in states if (kept := self._versions.get(s.task_id)) and kept[0] == s.uid}
        asking: dict[str, States] = defaultdict(list)
        for state in states:
            if (state.phase == TrainingStatus.SUCCEEDED and state.uid not in versions and runs.get(state.uid)
                    and state.request.get("customModelName")):
                asking[state.request["customModelName"]].append(state)
        for name, group in asking.items():
            try:
                by_run = await run_blocking(self.tracking.registered_versions, name)
            except DependencyUnavailable as exc:
                log.warning("reading the versions of registered model %r failed: %s", name, exc)
                continue
            for state in group:
                run = runs[state.uid]
                versions[state.uid] = by_run.get(run.run_id) if run else None
                self._versions[state.task_id] = (state.uid, versions[state.uid])
        return versions

    def _task(self, state: WorkloadState, run: TaskRun | None, version: str | None) -> TrainingTask:
        request = state.request
        succeeded = state.phase == TrainingStatus.SUCCEEDED
        progress = progress_of(run.metrics) if run and state.phase == TrainingStatus.RUNNING else None
        return TrainingTask(
            progress=progress,
            metrics=model_metrics(run.metrics) if run and succeeded else None,
            registered_model_version=version,
            mlflow_run_url=run.url if run and succeeded else None,
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
            mlflow_run_id=run.run_id if run else None,
        )
