"""Training workload: what a Job's container runs (`python script/train.py`).

Reads the task's spec from $MLOPS_TRAIN_SPEC, loads the dataset the way the profile's handler
reads it (a CSV table, JSON Lines records ...), trains the handler's model in an MLflow run under
the task's experiment (tagged with the task id), logs params, metrics and the model, and
registers it under `customModelName`. Any error ends the process
with a non-zero code and a one-line reason in the termination log, which the API shows.
"""

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.base import TrainingError
from models.spec import (
    DEFAULT_TERMINATION_LOG,
    HANDLER_TAG,
    PROFILE_TAG,
    TASK_ID_TAG,
    TERMINATION_LOG_ENV,
    TRAIN_SPEC_ENV,
    TrainSpec,
)


def log(message: str, **fields: object) -> None:
    print(json.dumps({"message": message, **fields}, default=str), flush=True)


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


def train(spec: TrainSpec) -> None:
    import mlflow

    from models import get_handler
    from models.base import TrainContext

    handler = get_handler(spec.handler)
    device = choose_device(spec.use_gpu)
    mlflow.set_experiment(spec.experiment_name)
    tags = {TASK_ID_TAG: spec.task_id, PROFILE_TAG: spec.model_profile, HANDLER_TAG: spec.handler}
    with mlflow.start_run(run_name=spec.task_id, tags=tags) as run:
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


def main() -> int:
    started = time.monotonic()
    try:
        spec = TrainSpec.model_validate_json(os.environ[TRAIN_SPEC_ENV])
    except KeyError:
        message = f"{TRAIN_SPEC_ENV} is not set: the trainer needs the task spec"
    except ValueError as exc:
        message = f"{TRAIN_SPEC_ENV} is not a valid task spec: {exc}"
    else:
        try:
            train(spec)
            log("done", seconds=round(time.monotonic() - started, 2))
            return 0
        except TrainingError as exc:
            message = str(exc)
        except Exception as exc:
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    write_termination_message(message)
    return 1


if __name__ == "__main__":
    sys.exit(main())
