"""What the control plane asks MLflow: does a run exist, and which run did a task make.

Blocking (the MLflow client speaks HTTP synchronously): call through run_blocking.
"""

import logging
import os
import tempfile
import time
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
class RunOutcome:
    metrics: dict[str, float]
    registered_version: str | None
    url: str | None


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

    def find_task_run(self, experiment_name: str, task_id: str) -> str | None:
        """Id of the newest run tagged with this task id, or None if there is none; raises
        DependencyUnavailable when MLflow cannot say (after one more try)."""
        for attempt in range(2):
            try:
                return self._find_task_run(experiment_name, task_id)
            except Exception as exc:
                if attempt:
                    raise self._unavailable(exc) from exc
                time.sleep(0.2)  # SQLite-backed servers refuse reads briefly under concurrent writes
        raise AssertionError("unreachable")

    def _find_task_run(self, experiment_name: str, task_id: str) -> str | None:
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TASK_ID_TAG}` = '{task_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

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

    def run_outcome(self, run_id: str, registered_name: str | None) -> RunOutcome | None:
        """A finished run's metrics, the version of `registered_name` it registered, and its page in
        the MLflow UI (when the tracking URI is a web address); None when MLflow cannot say."""
        try:
            run = self.client.get_run(run_id)
            version = None
            if registered_name:
                found = self.client.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'")
                version = str(max(int(v.version) for v in found)) if found else None
        except Exception as exc:
            log.warning("reading the outcome of run %s failed: %s", run_id, exc)
            return None
        url = (f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
               if self.ui_url.startswith(("http://", "https://")) else None)
        return RunOutcome(dict(run.data.metrics), version, url)

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """The run's latest value of each metric; empty when MLflow cannot say."""
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except Exception as exc:
            log.warning("reading the metrics of run %s failed: %s", run_id, exc)
            return {}

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
