"""What the control plane asks MLflow: does a run exist, and which run did a task make.

Blocking (the MLflow client speaks HTTP synchronously): call through run_blocking.
"""

import logging
import os
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from app.errors import DependencyUnavailable
from models.spec import PROFILE_TAG, TASK_ID_TAG

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None


_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    profile: str | None


@dataclass(frozen=True)
class TaskRun:
    """A training task's run: its id, its page in the MLflow UI and its latest metrics."""

    run_id: str
    url: str | None
    metrics: dict[str, float]


# Runs per search call (MLflow's own maximum is 50,000).
SEARCH_PAGE = 1000


class Tracking:
    def __init__(self, tracking_uri: str, ui_url: str | None = None):
        # The API answers users: fail fast instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        # Where people open MLflow's UI (MLOPS_MLFLOW_UI_URL; on a cluster the tracking URI is a
        # Service address a browser cannot reach).
        self.ui_url = ui_url or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def _unavailable(self, exc: Exception) -> DependencyUnavailable:
        return DependencyUnavailable(f"MLflow at {self.uri} cannot be reached: {type(exc).__name__}: {exc}"[:500])

    def run_info(self, run_id: str) -> RunInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise self._unavailable(exc) from exc
        except OSError as exc:  # connection refused, reset, DNS
            raise self._unavailable(exc) from exc
        return RunInfo(run.info.run_id, run.info.status, run.data.tags.get(PROFILE_TAG))

    def task_runs(self, experiment_name: str, task_ids: Collection[str], since_ms: int | None) -> dict[str, TaskRun]:
        """The newest run of each of these tasks (tagged with its id) in the experiment, with its
        latest metrics: one search for a whole page of tasks, paged by MLflow. For one task it
        asks for its tag; for several, for the tagged runs started since `since_ms` (the oldest
        task's creation, less a margin), then, if some are missing (a clock far off, a task that
        made no run), for all the experiment's tagged runs. Raises DependencyUnavailable when
        MLflow cannot say (after one more try)."""
        for attempt in range(2):
            try:
                return self._task_runs(experiment_name, set(task_ids), since_ms)
            except Exception as exc:
                if attempt:
                    raise self._unavailable(exc) from exc
                time.sleep(0.2)  # SQLite-backed servers refuse reads briefly under concurrent writes
        raise AssertionError("unreachable")

    def _task_runs(self, experiment_name: str, wanted: set[str], since_ms: int | None) -> dict[str, TaskRun]:
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None or not wanted:
            return {}
        if len(wanted) == 1:
            return self._search(experiment.experiment_id, f"tags.`{TASK_ID_TAG}` = '{next(iter(wanted))}'", wanted)
        tagged = f"tags.`{TASK_ID_TAG}` LIKE '%'"
        found = self._search(experiment.experiment_id, f"{tagged} AND attributes.start_time >= {since_ms}", wanted) \
            if since_ms is not None else {}
        if len(found) < len(wanted):
            found = self._search(experiment.experiment_id, tagged, wanted)
        return found

    def _search(self, experiment_id: str, where: str, wanted: set[str]) -> dict[str, TaskRun]:
        found: dict[str, TaskRun] = {}
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=where, max_results=SEARCH_PAGE,
                                           order_by=["attributes.start_time DESC"], page_token=token)
            for run in page:
                task_id = run.data.tags.get(TASK_ID_TAG)
                if task_id in wanted and task_id not in found:  # newest first: the first is the newest
                    found[task_id] = TaskRun(run.info.run_id, self._run_url(run.info.experiment_id, run.info.run_id),
                                             dict(run.data.metrics))
            token = page.token
            if not token or len(found) == len(wanted):
                return found

    def registered_versions(self, name: str) -> dict[str, str]:
        """The newest version of registered model `name` that each run registered, by run id (one
        call for every task of a page that registers under that name). Raises DependencyUnavailable."""
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except Exception as exc:
            raise self._unavailable(exc) from exc
        newest: dict[str, str] = {}
        for version in versions:
            if version.run_id and int(version.version) > int(newest.get(version.run_id, "0")):
                newest[version.run_id] = str(version.version)
        return newest

    def _run_url(self, experiment_id: str, run_id: str) -> str | None:
        """The run's page in the MLflow UI, when the UI is a web address."""
        if not self.ui_url.startswith(("http://", "https://")):
            return None
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version(self, name: str, version: str | None = None, alias: str | None = None
                      ) -> ModelVersionInfo | None:
        """A registered model's version, by number or by alias; None if there is no such version."""
        from mlflow.exceptions import MlflowException

        try:
            found = (self.client.get_model_version(name, version) if version is not None
                     else self.client.get_model_version_by_alias(name, alias or ""))
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise self._unavailable(exc) from exc
        except OSError as exc:
            raise self._unavailable(exc) from exc
        return ModelVersionInfo(found.name, str(found.version), found.run_id or None)

    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        """Point `alias` at `version` of a registered model; None removes the alias."""
        from mlflow.exceptions import MlflowException

        try:
            if version is None:
                self.client.delete_registered_model_alias(name, alias)
            else:
                self.client.set_registered_model_alias(name, alias, version)
        except (MlflowException, OSError) as exc:
            raise self._unavailable(exc) from exc

    def read_text_artifact(self, run_id: str, path: str) -> str | None:
        """A text artifact of a run, or None when the run has none at that path."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as directory:
            try:
                local = self.client.download_artifacts(run_id, path, directory)
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                    return None
                raise self._unavailable(exc) from exc
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    return None
                raise self._unavailable(exc) from exc
            return Path(local).read_text(errors="replace")

    def keep_text(self, run_id: str, text: str, path: str) -> None:
        """Store `text` as the artifact `path` of a run."""
        self.client.log_text(run_id, text, path)
