"""Where every data-plane call is seen once, when it ends: its task id, status, duration, request
id and the model server that answered. The access line is written and the request metrics are
counted here (per-revision counts belong here too), and nowhere else."""

import logging
import time
from dataclasses import dataclass
from typing import Any

from app.access_log import AccessLog
from app.dataplane.revision_stats import RevisionStats
from app.dataplane.routes import PREFIX, Route
from app.metrics import RequestMetrics

LOGGER = logging.getLogger("mlops.dataplane")


@dataclass(slots=True)
class Call:
    task_id: str
    route: Route | None  # None: a method the path does not take
    scope: dict[str, Any]  # the ASGI scope: method, path, client, HTTP version
    request_id: str
    started: float  # time.perf_counter()
    status: int = 0  # 0 until answered; 499 when the caller left before its body was complete
    model_id: str = ""  # the deployment's, once admitted
    upstream: str | None = None  # the base URL of the model server chosen
    revision: int | None = None  # the revision whose model server was chosen
    failure: str | None = None  # refused, timeout, server_error or broken: the model server's failure
    outcome: str | None = None  # how an answer that began ended badly, if it did


class CallObserver:
    def __init__(self, access_log: AccessLog, metrics: RequestMetrics, revisions: RevisionStats):
        self.access_log = access_log
        self.metrics = metrics
        self.revisions = revisions

    def observe(self, call: Call, ended: float | None = None) -> None:
        """`ended`: when its answer was done (perf_counter), if it is observed later than that."""
        seconds = (ended or time.perf_counter()) - call.started
        self.access_log.write(call.scope, call.status, seconds, call.request_id, call.task_id)
        method = call.scope["method"]
        if call.route is not None:
            self.metrics.request(call.route.template, method, call.status, seconds)
            self.metrics.call(call.task_id, call.model_id, call.route.name, call.status, seconds, call.failure)
            if call.revision is not None:
                self.revisions.record(call.task_id, call.revision, call.status, seconds)
        else:
            self.metrics.request(f"{PREFIX}{{task_id}}/...", method, call.status, seconds)
        if call.outcome is not None:
            LOGGER.warning("%s %s: %s", call.scope["method"], call.scope["path"], call.outcome,
                           extra={"requestId": call.request_id, "taskId": call.task_id})
