"""The servers under test, each started on the same model with one worker: ours (script/serve.py),
`mlflow models serve`, MLServer with mlserver-sklearn, KServe's Python model server; each knows
its request body and how to read predictions back from its answer."""

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.environments import PeerEnv
from benchmarks.models import BenchModel
from benchmarks.processes import Server, free_port
from models.spec import SERVE_HOST_ENV, SERVE_PORT_ENV, SERVE_SPEC_ENV, TERMINATION_LOG_ENV, ServeSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KSERVE_SCRIPT = Path(__file__).resolve().parent / "kserve_server.py"
MODEL_NAME = "bench"


@dataclass(frozen=True)
class Launch:
    server: Server
    predict_url: str


@dataclass(frozen=True)
class Target:
    name: str
    title: str  # the report's wording
    env_name: str | None  # the peer's virtual environment, None for ours
    launch: Callable[[BenchModel, PeerEnv | None, Path, str], Launch]
    body: Callable[[np.ndarray], bytes]
    predictions: Callable[[bytes], list[float]]


def _ours(model: BenchModel, _: PeerEnv | None, work: Path, tracking_uri: str) -> Launch:
    port = free_port()
    spec = ServeSpec(task_id="bench", model_id="bench", model_uri=model.model_uri, model_profile=model.profile,
                     handler=model.handler)
    env = {SERVE_SPEC_ENV: spec.model_dump_json(), SERVE_HOST_ENV: "127.0.0.1", SERVE_PORT_ENV: str(port),
           TERMINATION_LOG_ENV: str(work / "ours.termination.log"), "MLFLOW_TRACKING_URI": tracking_uri}
    server = Server("ours", [sys.executable, str(PROJECT_ROOT / "script" / "serve.py")],
                    f"http://127.0.0.1:{port}/ready", env, PROJECT_ROOT, work / "ours.log")
    return Launch(server, f"http://127.0.0.1:{port}/predict")


def _mlflow(model: BenchModel, peer: PeerEnv | None, work: Path, _: str) -> Launch:
    assert peer is not None
    port = free_port()
    command = [peer.bin("mlflow"), "models", "serve", "-m", str(model.mlflow_dir), "-h", "127.0.0.1",
               "-p", str(port), "-w", "1", "--env-manager", "local"]
    server = Server("mlflow", command, f"http://127.0.0.1:{port}/ping", peer.activated(), work,
                    work / "mlflow-serve.log")
    return Launch(server, f"http://127.0.0.1:{port}/invocations")


def _mlserver(model: BenchModel, peer: PeerEnv | None, work: Path, _: str) -> Launch:
    assert peer is not None
    port = free_port()
    folder = work / f"mlserver-{model.key}"
    folder.mkdir(parents=True, exist_ok=True)
    # One process: inference in the server process itself (parallel_workers 0), which is
    # MLServer's fastest setting for a model this small (no hop to a worker process).
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model.joblib_file)},
    }))
    server = Server("mlserver", [peer.bin("mlserver"), "start", str(folder)],
                    f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready", peer.activated(), work,
                    work / "mlserver.log")
    return Launch(server, f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer")


def _kserve(model: BenchModel, peer: PeerEnv | None, work: Path, _: str) -> Launch:
    assert peer is not None
    port = free_port()
    command = [peer.python, str(KSERVE_SCRIPT), "--model_name", MODEL_NAME, "--model_file", str(model.joblib_file),
               "--http_port", str(port), "--grpc_port", str(free_port())]
    server = Server("kserve", command, f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}", peer.activated(), work,
                    work / "kserve.log")
    return Launch(server, f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict")


def _v2_body(rows: np.ndarray) -> bytes:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.reshape(-1).tolist()}
    return orjson.dumps({"inputs": [tensor]})


TARGETS: dict[str, Target] = {
    "ours": Target("ours", "ours: script/serve.py", None, _ours,
                   lambda rows: orjson.dumps({"userId": "bench", "data": {"features": rows.tolist()}}),
                   lambda answer: orjson.loads(answer)["predictions"]),
    "mlflow": Target("mlflow", "mlflow models serve", "mlflow", _mlflow,
                     lambda rows: orjson.dumps({"inputs": rows.tolist()}),
                     lambda answer: orjson.loads(answer)["predictions"]),
    "mlserver": Target("mlserver", "MLServer + mlserver-sklearn (V2)", "mlserver", _mlserver, _v2_body,
                       lambda answer: orjson.loads(answer)["outputs"][0]["data"]),
    "kserve": Target("kserve", "KServe model server (v1)", "kserve", _kserve,
                     lambda rows: orjson.dumps({"instances": rows.tolist()}),
                     lambda answer: orjson.loads(answer)["predictions"]),
}
