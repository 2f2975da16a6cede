"""The model server's Prometheus metrics (GET /metrics), named as MLServer names them where it has
the same: model_infer_request_success / _failure, model_infer_request_duration_seconds. Labels are
fixed for the process (one model per server), so each request pays a counter and a histogram
update, never a label lookup."""

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LABELS = ["model_name", "model_version"]
# Seconds inside the server: from microseconds (a linear model) to seconds (a large batch).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SUCCESS = Counter("model_infer_request_success", "Predicts answered 200", LABELS)
FAILURE = Counter("model_infer_request_failure", "Predicts answered otherwise, by reason", [*LABELS, "reason"])
DURATION = Histogram("model_infer_request_duration_seconds", "Predict time inside the server", LABELS,
                     buckets=BUCKETS)
ROWS = Counter("model_infer_rows", "Rows predicted", LABELS)
INFO = Gauge("model_info", "What this server serves, and in which form", [*LABELS, "task_id", "handler", "form"])


def model_version(model_uri: str) -> str:
    """The run id of runs:/<id>/..., the version of models:/<name>/<version>, else the URI."""
    scheme, _, rest = model_uri.partition(":/")
    parts = [part for part in rest.split("/") if part]
    if scheme == "runs" and parts:
        return parts[0]
    if scheme == "models" and len(parts) >= 2:
        return parts[1]
    return model_uri


class ServerMetrics:
    def __init__(self, model_name: str, model_version: str, task_id: str, handler: str, form: str):
        self.labels = (model_name, model_version)
        self.success = SUCCESS.labels(*self.labels)
        self.duration = DURATION.labels(*self.labels)
        self.rows = ROWS.labels(*self.labels)
        self.failures: dict[str, Counter] = {}
        INFO.labels(model_name, model_version, task_id, handler, form).set(1)

    def answered(self, rows: int, seconds: float) -> None:
        self.success.inc()
        self.rows.inc(rows)
        self.duration.observe(seconds)

    def failed(self, reason: str, seconds: float) -> None:
        counter = self.failures.get(reason)
        if counter is None:
            counter = self.failures[reason] = FAILURE.labels(*self.labels, reason)
        counter.inc()
        self.duration.observe(seconds)

    @staticmethod
    def exposition() -> bytes:
        return generate_latest(REGISTRY)
