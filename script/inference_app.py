"""The model server's HTTP app: a bare ASGI app under uvicorn (script/serve.py runs it).

  GET  /health    liveness: the process answers
  GET  /ready     readiness: 200 once the model is loaded
  GET  /metadata  what is being served
  GET  /metrics   Prometheus metrics (script/server_metrics.py)
  POST /predict   {"data": {"features": [[...], ...]}} -> {"predictions": [...], ...}
The request path: parse with orjson, check the shape, call the model; count it, and write one
access line with the caller's X-Request-ID (the control plane sends its own), which is echoed back.
"""

import asyncio
import logging
import time
from functools import partial
from typing import Any

import numpy as np
import orjson

from models.base import InputError, Predictor
from models.logs import REQUEST_ID_HEADER, access_line, request_id
from models.spec import ServeSpec
from script.server_metrics import CONTENT_TYPE, ServerMetrics, model_version

JSON_TYPE = (b"content-type", b"application/json")
ACCESS = logging.getLogger("mlops.model_server.access")
# A failed predict's reason in model_infer_request_failure_total, by the error code it answered.
# Probes and scrapes come every few seconds: their lines would drown the predicts'.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
# numpy arrays in a prediction (the fast forms return them) serialize without a .tolist() copy.
DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def error(status: int, code: str, message: str, field: str | None = None) -> tuple[int, bytes]:
    detail = {"code": code, "message": message, **({"field": field} if field else {})}
    return status, orjson.dumps({"error": detail})


def extract_rows(payload: Any, n_features: int, max_rows: int) -> np.ndarray:
    """The seed's body {"data": {"features": [[...]]}}; also {"features": ...}, "instances", "inputs"."""
    if not isinstance(payload, dict):
        raise InputError("body must be a JSON object like {\"data\": {\"features\": [[...]]}}")
    source = payload.get("data", payload)
    rows = None
    if isinstance(source, dict):
        for key in ("features", "instances", "inputs"):
            if key in source:
                rows = source[key]
                break
    if rows is None:
        raise InputError("body must hold data.features: a list of rows, each a list of numbers")
    if not isinstance(rows, list) or not rows:
        raise InputError("data.features must be a non-empty list of rows")
    if not isinstance(rows[0], list):
        rows = [rows]  # a single row given flat
    if len(rows) > max_rows:
        raise InputError(f"data.features has {len(rows)} rows; at most {max_rows} per request")
    # The common case in one numpy call; anything it refuses is examined row by row below, to say
    # which row is wrong and how.
    try:
        array = np.array(rows, dtype=np.float64)
        if array.ndim == 2 and array.shape[1] == n_features:
            return array
    except (TypeError, ValueError):
        pass
    return _checked_rows(rows, n_features)


def _checked_rows(rows: list, n_features: int) -> np.ndarray:
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_features:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise InputError(f"data.features[{index}] has {got}; the model expects {n_features} features per row")
    try:
        array = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("data.features must contain only numbers") from None
    if array.ndim != 2:
        raise InputError("data.features must be a list of rows, each a flat list of numbers")
    return array


class InferenceApp:
    def __init__(self, spec: ServeSpec, predictor: Predictor, device: str, load_seconds: float,
                 access_log: bool = True):
        self.spec = spec
        self.predictor = predictor
        self.metrics = ServerMetrics(spec.model_id, model_version(spec.model_uri or ""), spec.task_id, spec.handler,
                                     predictor.form)
        self.access_log = access_log
        self.metadata = orjson.dumps({
            "taskId": spec.task_id, "modelId": spec.model_id, "modelUri": spec.model_uri,
            "modelProfile": spec.model_profile, "handler": spec.handler, "device": device,
            "features": predictor.n_features, "featureNames": predictor.feature_names,
            "form": predictor.form, **({"formNote": predictor.note} if predictor.note else {}),
            "loadSeconds": round(load_seconds, 3),
        })

    def predict(self, body: bytes) -> tuple[int, bytes]:
        started = time.perf_counter()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.metrics.failed("invalid_json", time.perf_counter() - started)
            return error(400, "invalid_json", f"body is not valid JSON: {exc}")
        try:
            rows = extract_rows(payload, self.predictor.n_features, self.spec.max_rows)
            answer = orjson.dumps(self.predictor.predict(rows), option=DUMP_OPTIONS)
        except InputError as exc:
            self.metrics.failed("invalid_input", time.perf_counter() - started)
            return error(422, "invalid_input", str(exc), "data.features")
        except Exception:
            self.metrics.failed("error", time.perf_counter() - started)
            raise
        self.metrics.answered(len(rows), time.perf_counter() - started)
        return 200, answer

    def route(self, method: str, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        """The status, body and content type of a request's answer."""
        if path == "/predict":
            if method == "POST":
                return (*self.predict(body), JSON_TYPE[1])
            return (*error(405, "method_not_allowed", "use POST"), JSON_TYPE[1])
        if path in ("/health", "/ready"):
            return 200, b'{"status":"ok"}', JSON_TYPE[1]
        if path == "/metadata":
            return 200, self.metadata, JSON_TYPE[1]
        if path == "/metrics":
            return 200, self.metrics.exposition(), CONTENT_TYPE
        return (*error(404, "not_found", f"no route {path}"), JSON_TYPE[1])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        sent_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                sent_id = value
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.spec.max_request_bytes:
                chunks.append(chunk)  # past the limit, drain without keeping
            if not message.get("more_body"):
                break
        if size > self.spec.max_request_bytes:
            limit = self.spec.max_request_bytes
            status, payload = error(413, "payload_too_large", f"body is larger than {limit} bytes")
            content_type = JSON_TYPE[1]
            if scope["path"] == "/predict":
                self.metrics.failed("too_large", time.perf_counter() - started)
        else:
            status, payload, content_type = self.route(scope["method"], scope["path"], b"".join(chunks))
        rid = request_id(sent_id)
        # A Content-Length spares the response chunked encoding, for us and for every client.
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode()),
                   (REQUEST_ID_HEADER, rid.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        if self.access_log and scope["path"] not in QUIET_PATHS:
            # Written on the loop's next turn, once uvicorn is done with this answer: measured, the
            # same line written here cost a quarter of the one-row predicts a second (docs/benchmarks.md).
            asyncio.get_running_loop().call_soon(
                partial(access_line, ACCESS, scope["method"], scope["path"], status, time.perf_counter() - started,
                        requestId=rid, taskId=self.spec.task_id))
