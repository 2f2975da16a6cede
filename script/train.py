"""Training workload: what a Job's container runs (`python script/train.py`).

Reads the task's spec from $MLOPS_TRAIN_SPEC, loads the dataset the way the profile's handler
reads it (a CSV table, JSON Lines records ...), trains the handler's model in an MLflow run under
the task's experiment (tagged with the task id), logs params, metrics and the model, and
registers it under `customModelName`. Any error ends the process
with a non-zero code and a one-line reason in the termination log, which the API shows.

It logs JSON lines (models/logs.py) with the task id on each; the whole log is also kept as the
artifact `logs/trainer.log` of its run, whether training succeeds or fails, so it outlives the pod.
"""

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import logs
from models.base import TrainingError
from models.spec import (
    DEFAULT_TERMINATION_LOG,
    HANDLER_TAG,
    PROFILE_TAG,
    TASK_ID_TAG,
    TERMINATION_LOG_ENV,
    TRAIN_SPEC_ENV,
    TRAINER_LOG_ARTIFACT,
    TrainSpec,
)

LOGGER = logging.getLogger("mlops.trainer")


def log(message: str, **fields: object) -> None:
    LOGGER.info(message, extra=fields)


def write_termination_message(message: str) -> None:
    path = os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
    # Outside a pod with no file set, stderr alone carries the message.
    with contextlib.suppress(OSError):
        Path(path).write_text(message[:4000])


def choose_device(use_gpu: bool) -> str:
    import torch

    if use_gpu and torch.cuda.is_available():
        return "cuda"
    if use_gpu:
        log("useGpu is true but no CUDA device is visible; training on the CPU")
    return "cpu"


# MLflow reads these from the environment before anything the code asks: an experiment or run
# inherited from wherever the trainer was started must not replace the task's own.
INHERITED_MLFLOW_CONTEXT = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def train(spec: TrainSpec, log_file: Path) -> None:
    for name in INHERITED_MLFLOW_CONTEXT:
        os.environ.pop(name, None)
    import mlflow

    from models import get_handler
    from models.base import TrainContext

    handler = get_handler(spec.handler)
    device = choose_device(spec.use_gpu)
    # The run names its experiment: when another trainer creates the same experiment at the same
    # moment, set_experiment returns it without making it the active one (MLflow 3.17), and the run
    # would land in the Default experiment, where the task's status never finds it.
    experiment = mlflow.set_experiment(spec.experiment_name)
    tags = {TASK_ID_TAG: spec.task_id, PROFILE_TAG: spec.model_profile, HANDLER_TAG: spec.handler}
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=spec.task_id, tags=tags) as run:
        try:
            log("run started", runId=run.info.run_id, experiment=spec.experiment_name, device=device)
            params = {**spec.hyperparameters, "datasetPath": spec.dataset_path, "device": device}
            if spec.target_column is not None:
                params["targetColumn"] = spec.target_column
            mlflow.log_params(params)
            data = handler.load_dataset(spec.dataset_path, spec.target_column)
            described = data.describe()
            mlflow.log_params(described)
            log("dataset loaded", **described)
            context = TrainContext(spec.hyperparameters, device, spec.initial_model_uri, spec.custom_model_name)
            metrics = handler.train(data, context)
            mlflow.flush_async_logging()
            log("run finished", runId=run.info.run_id, registeredModel=spec.custom_model_name, **metrics)
        except Exception as exc:
            # In the log kept with the run, not only in the pod's.
            LOGGER.error("training failed: %s", exc, exc_info=not isinstance(exc, TrainingError))
            raise
        finally:
            keep_log(log_file)


def keep_log(log_file: Path) -> None:
    """The log so far, as an artifact of the active run; a failure to keep it is logged, not raised."""
    import mlflow

    try:
        mlflow.log_artifact(str(log_file), str(Path(TRAINER_LOG_ARTIFACT).parent))
    except Exception as exc:
        LOGGER.warning("could not keep the log with the run: %s", exc)


def configure_logging(task_id: str | None) -> Path:
    """JSON lines on stdout and in a file kept with the run (models/logs.py); warnings too."""
    fields = {"taskId": task_id} if task_id else {}
    logs.configure(**fields)
    log_file = Path(tempfile.mkdtemp(prefix="mlops-trainer-")) / Path(TRAINER_LOG_ARTIFACT).name
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logs.formatter())
    handler.addFilter(logs.StaticFields(fields))
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)
    return log_file


def main() -> int:
    started = time.monotonic()
    try:
        spec = TrainSpec.model_validate_json(os.environ[TRAIN_SPEC_ENV])
    except KeyError:
        configure_logging(None)
        message = f"{TRAIN_SPEC_ENV} is not set: the trainer needs the task spec"
    except ValueError as exc:
        configure_logging(None)
        message = f"{TRAIN_SPEC_ENV} is not a valid task spec: {exc}"
    else:
        log_file = configure_logging(spec.task_id)
        try:
            train(spec, log_file)
            log("done", seconds=round(time.monotonic() - started, 2))
            return 0
        except TrainingError as exc:
            message = str(exc)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
    LOGGER.error("error: %s", message)
    write_termination_message(message)
    return 1


if __name__ == "__main__":
    sys.exit(main())
