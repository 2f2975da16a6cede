"""The steps of the ml_pipeline_end_to_end pipeline as plain functions, with no scheduler import.

Each step talks to the control plane through mlops_client (and to MLflow for the champion's
metrics), so the DAG file beside it only wires them together, and the tests run them against a
real API without a scheduler installed. The champion is the registered model's MLflow alias
`champion`: the version the deployment serves once a run beat the one before.

Two rules of the dags folder this file keeps: it never names the scheduler (the DAG processor
imports every file that names both it and "DAG", looking for DAGs; this one holds none), and
MLflow and boto3 are imported where they are used, not at the top (the DAG file imports this
module each time it is parsed, and `import mlflow` takes seconds).
"""

import csv
import hashlib
import io
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlparse

from mlops_client import Client, DeploymentTask, NotFound, TrainingTask

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
DEPLOY, SKIP = "deploy", "skip"
# Where an s3:// dataset lives when it is not AWS itself (MinIO, SeaweedFS): the platform's
# variable first, then the one boto3 reads by itself.
S3_ENDPOINT_ENVS = ("MLOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
MAX_TASK_ID_LENGTH = 57  # the API's limit: a task id names Kubernetes objects with a 6-character prefix
SAMPLE_BYTES = 64 * 1024  # enough of a CSV's head for a few smoke-test rows


class PipelineError(RuntimeError):
    """A step cannot go on; the message says which task, model or value is the cause."""


class TrainingFailed(PipelineError):
    """The training task ended Failed; the message is the API's."""


class DeploymentFailed(PipelineError):
    """The deployment, or its new revision, cannot start."""


class SmokeTestFailed(PipelineError):
    """The deployed model answered, but not one valid prediction per row."""


# -- the dataset ------------------------------------------------------------------------------


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// dataset path needs a bucket and a key (s3://bucket/path/data.csv), got '{uri}'")
    return bucket, key


def _s3_client() -> Any:
    """boto3's S3 client on the endpoint the platform names (credentials from boto3's usual places)."""
    import boto3

    endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), None)
    return boto3.client("s3", endpoint_url=endpoint)


def _local_path(path: str) -> Path:
    """A plain path or a file:// URI, as the file it names."""
    return Path(unquote(urlparse(path).path)) if path.startswith("file://") else Path(path)


def check_dataset(path: str) -> str:
    """Fail before a trainer is started when the dataset is not there: a local path (or file://)
    must be a file, an s3:// object must answer HEAD. Returns the path. A local path is checked on
    the machine that runs this step, so it must be one the API's trainers see the same way."""
    if path.startswith("s3://"):
        import botocore.exceptions

        bucket, key = _s3_location(path)
        try:
            _s3_client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise FileNotFoundError(f"dataset not found: {path} (S3 answered {code})") from None
            raise PipelineError(f"cannot check dataset {path}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise PipelineError(f"cannot reach S3 to check dataset {path}: {exc}") from exc
        return path
    local = _local_path(path)
    if not local.exists():
        raise FileNotFoundError(f"dataset not found: {local}")
    if not local.is_file():
        raise FileNotFoundError(f"dataset path is not a file: {local}")
    return path


def _dataset_head(path: str) -> str:
    """The first SAMPLE_BYTES of the dataset, cut at the last whole line."""
    if path.startswith("s3://"):
        bucket, key = _s3_location(path)
        body = _s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{SAMPLE_BYTES - 1}")["Body"]
        data = body.read()
    else:
        with _local_path(path).open("rb") as file:
            data = file.read(SAMPLE_BYTES)
    text = data.decode("utf-8", errors="replace")
    return text if len(data) < SAMPLE_BYTES else text[: text.rfind("\n") + 1]


def sample_rows(path: str, target_column: str | None, count: int = 3) -> list[list[float]]:
    """The first `count` rows of a CSV dataset as feature rows (the target column left out: the
    named one, else the last, as the trainers read it), for a smoke test that needs no rows of its
    own and always has the model's width."""
    reader = csv.reader(io.StringIO(_dataset_head(path)))
    header = next(reader, None)
    if not header:
        raise PipelineError(f"dataset {path} has no header line to take smoke-test rows from")
    target = target_column or header[-1]
    if target not in header:
        raise PipelineError(f"dataset {path} has no column '{target}' (columns: {', '.join(header)})")
    skip = header.index(target)
    rows = []
    for line in reader:
        if len(rows) == count:
            break
        if line:
            try:
                rows.append([float(value) for index, value in enumerate(line) if index != skip])
            except ValueError as exc:
                raise PipelineError(f"dataset {path}, data row {len(rows) + 1}: a feature is not a number ({exc}); "
                                    "give smokeTestRows") from None
    if not rows:
        raise PipelineError(f"dataset {path} has no data rows")
    return rows


# -- training ---------------------------------------------------------------------------------


def training_task_id(model_name: str, run_id: str) -> str:
    """A task id per pipeline run (the API answers the same id with the same task, and refuses it
    with another body): the model's name as a DNS label, and a digest of the run's id."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-") or "train"
    return f"{stem[: MAX_TASK_ID_LENGTH - len(digest) - 1].rstrip('-')}-{digest}"


def start_training(client: Client, body: dict[str, Any]) -> str:
    """Start the training task (the specification's camelCase body) and return its id. The body
    must name customModelName: the pipeline deploys and promotes that registered model. Starting
    the same body again (a retry of the step) is the same task."""
    if not body.get("customModelName"):
        raise ValueError("the training body needs customModelName: the pipeline deploys the registered model")
    return client.train(body).task_id


def training_finished(client: Client, task_id: str) -> bool:
    """True once the task Succeeded and its outcome (run, metrics, registered version) is known;
    False while it runs. A Failed task raises TrainingFailed with the API's message, so the
    sensor fails at once instead of waiting out its timeout."""
    task = client.training(task_id)
    if task.status == "Failed":
        raise TrainingFailed(f"training task '{task_id}' failed: {task.message or 'no message'}")
    if task.status != "Succeeded":
        return False
    # MLflow may answer the outcome on a later read; the next poke sees it.
    return bool(task.mlflow_run_id and task.metrics is not None
                and (task.registered_model_version or not task.custom_model_name))


def _finished_training(client: Client, task_id: str) -> TrainingTask:
    task = client.training(task_id)
    if task.status != "Succeeded":
        raise PipelineError(f"training task '{task_id}' is {task.status}, not Succeeded")
    return task


def _registered(task: TrainingTask) -> tuple[str, str]:
    if not task.custom_model_name or not task.registered_model_version:
        raise PipelineError(f"training task '{task.task_id}' registered no model version "
                            f"(customModelName: {task.custom_model_name!r})")
    return task.custom_model_name, task.registered_model_version


def registered_model(client: Client, task_id: str) -> tuple[str, str]:
    """The (name, version) the training task registered under its customModelName."""
    return _registered(_finished_training(client, task_id))


# -- evaluation -------------------------------------------------------------------------------


def champion_version(mlflow: "MlflowClient", model_name: str) -> Any | None:
    """The registered version the `champion` alias names, or None when there is none yet (no such
    alias, or no such model). Any other MLflow error is raised: an unreachable MLflow must not
    read as "no champion" and deploy whatever was trained."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as lookup_error:
        try:
            aliases = mlflow.get_registered_model(model_name).aliases
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if CHAMPION_ALIAS not in aliases:
            return None
        raise lookup_error


def is_better(candidate: float, champion: float | None, higher_is_better: bool) -> bool:
    """Whether the candidate beats the champion (a tie does not: no redeploy for nothing)."""
    if champion is None:
        return True
    return candidate > champion if higher_is_better else candidate < champion


def evaluate(client: Client, task_id: str, metric: str, higher_is_better: bool, tracking_uri: str) -> dict[str, Any]:
    """Compare the training run's `metric` with the champion's (read from MLflow: the alias's
    version, then its run). Returns the decision ("deploy" or "skip") with both values; with no
    champion yet the new run wins."""
    task = _finished_training(client, task_id)
    model_name, version = _registered(task)
    found = task.metrics or {}
    if metric not in found:
        raise PipelineError(f"training task '{task_id}' has no metric '{metric}' "
                            f"(it logged: {', '.join(sorted(found)) or 'none'})")
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=tracking_uri)
    champion = champion_version(mlflow, model_name)
    champion_value = None
    if champion is not None:
        champion_metrics = mlflow.get_run(champion.run_id).data.metrics
        if metric not in champion_metrics:
            raise PipelineError(f"the champion {model_name} v{champion.version} (run {champion.run_id}) has no "
                                f"metric '{metric}' to compare with; it logged: {', '.join(sorted(champion_metrics))}")
        champion_value = float(champion_metrics[metric])
    candidate_value = float(found[metric])
    return {
        "decision": DEPLOY if is_better(candidate_value, champion_value, higher_is_better) else SKIP,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "model_name": model_name,
        "candidate_version": version,
        "candidate_value": candidate_value,
        "champion_version": champion.version if champion is not None else None,
        "champion_value": champion_value,
    }


# -- deployment -------------------------------------------------------------------------------


def deployment_exists(client: Client, deployment_task_id: str) -> bool:
    """Whether the first deploy was done already (then a new model is an update)."""
    try:
        client.deployment(deployment_task_id)
    except NotFound:
        return False
    return True


def wait_until_serving(client: Client, deployment_task_id: str, revision: int, timeout: float,
                       poll: float = 1.0) -> DeploymentTask:
    """The deployment once `revision` answers the predicts. Its status alone does not say so: an
    update stays Ready, served by the revision before, while the new one starts."""
    deadline = time.monotonic() + timeout
    while True:
        deployment = client.deployment(deployment_task_id)
        if deployment.status == "Failed":
            raise DeploymentFailed(f"deployment '{deployment_task_id}' failed: {deployment.message}")
        record = next((r for r in client.revisions(deployment_task_id) if r.revision == revision), None)
        if record is None:
            raise PipelineError(f"deployment '{deployment_task_id}' has no revision {revision}")
        if record.state == "Serving":
            return deployment
        if record.state == "Failed":
            raise DeploymentFailed(f"revision {revision} of deployment '{deployment_task_id}' cannot start: "
                                   f"{record.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"revision {revision} of deployment '{deployment_task_id}' was not serving after "
                               f"{timeout:g} s (it is {record.state}: {record.message or deployment.message})")
        time.sleep(poll)


def promote_champion(client: Client, deployment_task_id: str) -> DeploymentTask:
    """Point the `champion` alias at the version the deployment's newest revision serves, through
    the API, which records it with the revision (a rollback moves the alias back)."""
    return cast(DeploymentTask, client.update_deployment(deployment_task_id, promote_alias=CHAMPION_ALIAS))


def first_deploy(client: Client, task_id: str, deployment_task_id: str, model_id: str, profile: str,
                 timeout: float = 600.0) -> DeploymentTask:
    """Deploy the training's registered version, wait until it serves, then make it the champion
    (POST cannot promote an alias; a PATCH with only promoteAlias does, without a new revision)."""
    model_name, version = registered_model(client, task_id)
    created = client.deploy(deployment_task_id, model_id, profile, model_name=model_name, model_version=version)
    wait_until_serving(client, deployment_task_id, created.revision, timeout)
    return promote_champion(client, deployment_task_id)


def update_to_version(client: Client, task_id: str, deployment_task_id: str, timeout: float = 600.0
                      ) -> DeploymentTask:
    """Roll the deployment onto the training's registered version (a new revision, no failed
    request), wait until it serves, then move the champion alias onto it: a revision that cannot
    start never becomes the champion. Run again (a retry of the step), it makes no second revision."""
    model_name, version = registered_model(client, task_id)
    current = client.deployment(deployment_task_id)
    if (current.model.model_name, current.model.model_version) == (model_name, version):
        revision = current.revision
    else:
        updated = client.update_deployment(deployment_task_id, model_name=model_name, model_version=version)
        revision = cast(DeploymentTask, updated).revision
    wait_until_serving(client, deployment_task_id, revision, timeout)
    return promote_champion(client, deployment_task_id)


def deploy_or_update(client: Client, task_id: str, deployment_task_id: str, model_id: str, profile: str,
                     timeout: float = 600.0) -> DeploymentTask:
    """The first deploy when the deployment does not exist yet, else an update to the new version;
    either way the served version ends as the champion."""
    if deployment_exists(client, deployment_task_id):
        return update_to_version(client, task_id, deployment_task_id, timeout)
    return first_deploy(client, task_id, deployment_task_id, model_id, profile, timeout)


# -- smoke test -------------------------------------------------------------------------------


def _valid_prediction(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    return isinstance(value, str | list) and len(value) > 0


def smoke_test(client: Client, deployment_task_id: str, rows: list[list[Any]]) -> list[Any]:
    """Predict `rows` through the API and check there is one finite prediction (or label) per
    row; returns the predictions."""
    if not rows:
        raise ValueError("a smoke test needs at least one row")
    answer = client.predict(deployment_task_id, rows)
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(rows):
        raise SmokeTestFailed(f"deployment '{deployment_task_id}' answered {len(rows)} rows with {answer!r}, "
                              f"not one prediction per row")
    invalid = [(index, value) for index, value in enumerate(predictions) if not _valid_prediction(value)]
    if invalid:
        raise SmokeTestFailed(f"deployment '{deployment_task_id}' gave invalid predictions (row, value): {invalid}")
    return predictions
