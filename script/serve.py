"""Inference workload: what an inference Deployment's container runs (`python script/serve.py`).

Downloads the model named by $MLOPS_SERVE_SPEC (`runs:/<id>/model`) from MLflow once, in a child
process (script/download_model.py), loads it with the profile's serving handler, then serves it
with the HTTP app of script/inference_app.py (/health, /ready, /metadata, /predict) under uvicorn.
Language models go to script/llm_server.py instead (vLLM's OpenAI server).

Start-up order matters: MLflow's import in the download's child is the longest step, so the child
starts before this process imports anything beyond the standard library, and what serving needs
(numpy, pydantic, the model's runtime, uvicorn) is imported meanwhile.
"""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import SERVING_HANDLERS, get_serving_handler, logs
from models.workload_env import (
    DEFAULT_TERMINATION_LOG,
    SERVE_HOST_ENV,
    SERVE_PORT_ENV,
    SERVE_SPEC_ENV,
    TERMINATION_LOG_ENV,
)

DOWNLOADER = Path(__file__).resolve().with_name("download_model.py")


class DownloadError(Exception):
    """The model could not be downloaded; the message is MLflow's."""


class ModelDownload:
    """The model's download from MLflow, in a child process: MLflow's import is most of a model
    server's start-up and memory, and serving never needs it again."""

    def __init__(self, model_uri: str, folder: str):
        self.model_uri = model_uri
        self.process = subprocess.Popen([sys.executable, str(DOWNLOADER), model_uri, folder],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)

    @classmethod
    def early(cls, raw_spec: str | None, folder: str) -> "ModelDownload | None":
        """Start the download from the spec's raw JSON, before pydantic is imported to validate it:
        only for a handler that serves a downloaded model (never a language model's weights)."""
        try:
            fields = json.loads(raw_spec or "")
        except ValueError:
            return None
        if not isinstance(fields, dict) or fields.get("handler") not in SERVING_HANDLERS:
            return None
        uri = fields.get("model_uri")
        return cls(uri, folder) if isinstance(uri, str) and uri else None

    def wait(self) -> str:
        """The local directory of the downloaded model."""
        output, _ = self.process.communicate()
        lines = output.strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise DownloadError(f"the download process ended with code {self.process.returncode} and no answer"
                                ) from None
        if not isinstance(answer, dict) or "path" not in answer:
            raise DownloadError(str(answer.get("error", answer) if isinstance(answer, dict) else answer))
        return str(answer["path"])

    def stop(self) -> None:
        """End the download if it still runs (the server is stopping); one already waited for is done."""
        if self.process.poll() is None:
            self.process.kill()
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.communicate()


def task_id_of(raw_spec: str | None) -> str | None:
    """The task id from the spec's raw JSON, for the log lines before the spec is validated."""
    try:
        fields = json.loads(raw_spec or "")
    except ValueError:
        return None
    task_id = fields.get("task_id") if isinstance(fields, dict) else None
    return task_id if isinstance(task_id, str) else None


def choose_device(use_gpu: bool) -> str:
    if not use_gpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


LOGGER = logging.getLogger("mlops.model_server")


def fail(message: str) -> int:
    LOGGER.error("error: %s", message)
    # Outside a pod with no file set, stderr alone carries the message.
    with contextlib.suppress(OSError):
        Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)).write_text(message[:4000])
    return 1


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as folder:
        download = ModelDownload.early(os.environ.get(SERVE_SPEC_ENV), folder)
        # After the download's start, which is the longest step: JSON lines with the task id.
        logs.configure(taskId=task_id_of(os.environ.get(SERVE_SPEC_ENV)))
        try:
            return serve(download, folder, started)
        finally:
            if download is not None:
                download.stop()


def serve(download: ModelDownload | None, folder: str, started: float) -> int:
    from models.spec import ServeSpec

    try:
        spec = ServeSpec.model_validate_json(os.environ[SERVE_SPEC_ENV])
    except (KeyError, ValueError) as exc:
        return fail(f"{SERVE_SPEC_ENV} is missing or invalid: {exc}")
    handler = get_serving_handler(spec.handler)
    if getattr(handler, "serves_openai", False):  # a language model: vLLM's OpenAI server
        from script.llm_server import main as serve_language_model

        return serve_language_model(spec, sys.argv[1:], fail)
    if not spec.model_uri:
        return fail(f"{SERVE_SPEC_ENV} has no model_uri: handler {spec.handler} serves an MLflow model")
    if download is None or download.model_uri != spec.model_uri:
        download = ModelDownload(spec.model_uri, folder)
    import uvicorn

    from script.inference_app import InferenceApp

    if hasattr(handler, "preload"):
        handler.preload()
    device = choose_device(spec.use_gpu)
    try:
        model_dir = download.wait()
        predictor = handler.load(model_dir, device)
        shutil.rmtree(model_dir)  # everything serving needs is in memory now
    except DownloadError as exc:
        return fail(f"cannot load model {spec.model_uri}: {exc}")
    except Exception as exc:
        return fail(f"cannot load model {spec.model_uri}: {type(exc).__name__}: {exc}")
    load_seconds = time.monotonic() - started
    host = os.environ.get(SERVE_HOST_ENV, "0.0.0.0")
    port = int(os.environ.get(SERVE_PORT_ENV, "8080"))
    LOGGER.info("model loaded", extra={
        "modelUri": spec.model_uri, "device": device, "features": predictor.n_features, "form": predictor.form,
        **({"formNote": predictor.note} if predictor.note else {}), "seconds": round(load_seconds, 2),
        "listen": f"{host}:{port}"})
    access_log = os.environ.get("MLOPS_ACCESS_LOG", "true").lower() not in ("0", "false", "no")
    # httptools and uvloop (uvicorn[standard]): the fastest parser and loop uvicorn has.
    # No websockets and no lifespan: the app has neither, and uvicorn then imports less at start.
    # log_config=None: uvicorn's own lines go through the process's logging (JSON, with the task id).
    uvicorn.run(InferenceApp(spec, predictor, device, load_seconds, access_log), host=host, port=port,
                http="httptools", log_config=None,
                loop="uvloop", ws="none", log_level="warning", access_log=False, lifespan="off", server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
