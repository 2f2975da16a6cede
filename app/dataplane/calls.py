"""Where every data-plane call is seen once, when it ends: its task id, status, duration, request
id and the model server that answered. The access line is written here; request metrics and
per-revision counts belong here too, and nowhere else."""

import logging
import time
from dataclasses import dataclass
from typing import Any

from app.access_log import AccessLog

LOGGER = logging.getLogger("mlops.dataplane")


@dataclass(slots=True)
class Call:
    task_id: str
    scope: dict[str, Any]  # the ASGI scope: method, path, client, HTTP version
    request_id: str
    started: float  # time.perf_counter()
    status: int = 0  # 0 until answered; 499 when the caller left before its body was complete
    upstream: str | None = None  # the base URL of the model server chosen
    outcome: str | None = None  # how an answer that began ended badly, if it did


class CallObserver:
    def __init__(self, access_log: AccessLog):
        self.access_log = access_log

    def observe(self, call: Call) -> None:
        self.access_log.write(call.scope, call.status, time.perf_counter() - call.started, call.request_id)
        if call.outcome is not None:
            LOGGER.warning("%s %s: %s (requestId=%s)", call.scope["method"], call.scope["path"], call.outcome,
                           call.request_id)
