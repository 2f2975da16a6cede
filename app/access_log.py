"""One access line per request, written by the layer that saw the request whole: the data plane for
its calls (app/dataplane/calls.py), AccessLogMiddleware for every other route. uvicorn's own access
log is off, so no request is logged twice."""

import logging
import time
from typing import Any

from app.metrics import RequestMetrics
from app.request_ids import HEADER, current, request_id, task_id_of
from models.logs import access_line

LOGGER_NAME = "mlops.access"
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404)


class AccessLog:
    def __init__(self, enabled: bool = True, logger: logging.Logger | None = None):
        self.enabled = enabled
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    def write(self, scope: dict[str, Any], status: int, seconds: float, request_id: str,
              task_id: str | None = None) -> None:
        if self.enabled:
            client = scope.get("client")
            fields = {"requestId": request_id, "client": f"{client[0]}:{client[1]}" if client else None,
                      "httpVersion": scope.get("http_version", "1.1")}
            if task_id is not None:
                fields["taskId"] = task_id
            access_line(self.logger, scope["method"], scope["path"], status, seconds, **fields)


class AccessLogMiddleware:
    """The access line, the request metrics and the request id of every request that is not the
    data plane's."""

    def __init__(self, app: Any, access_log: AccessLog, metrics: RequestMetrics):
        self.app = app
        self.access_log = access_log
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        rid = request_id(next((value for name, value in scope["headers"] if name == HEADER), None))
        scope.setdefault("state", {})["request_id"] = rid
        current.set((rid, scope))
        status = 500  # an exception before the answer began is answered 500 by the server

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.access_log.write(scope, status, seconds, rid, task_id_of(scope))
            # The route's template, once FastAPI's router has matched it: never the raw path, whose
            # ids would make a time series per task.
            route = scope.get("route")
            self.metrics.request(getattr(route, "path", UNMATCHED), scope["method"], status, seconds)
