"""One log format for the control plane and its workloads (the trainer, the model server).

Each line is a JSON object, `time` (RFC 3339, UTC), `level`, `logger`, `message`, then the line's
fields (`requestId`, `taskId`, an access line's `method`, `path`, `status`, `durationMs` ...), as log
shippers and Loki read them. MLOPS_LOG_FORMAT=text gives a readable line for a terminal instead.
Fields are passed with `extra=`; a field is never a token, a secret or a request body.
"""

import logging
import os
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

LOG_FORMAT_ENV = "MLOPS_LOG_FORMAT"
FORMATS = ("json", "text")
# The fields a line may carry, in the order a text line shows them.
FIELDS = ("requestId", "taskId", "client", "method", "path", "httpVersion", "status", "durationMs", "modelId",
          "runId", "reason")


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the JSON line's content, for a person."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={value}" for name in FIELDS if (value := record.__dict__.get(name)) is not None)
        return f"{line} {fields}" if fields else line


def json_formatter() -> logging.Formatter:
    # uvicorn adds `color_message`, the message with terminal colour codes: not for a JSON line.
    return OrjsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                           rename_fields={"levelname": "level", "name": "logger"},
                           reserved_attrs=[*RESERVED_ATTRS, "color_message"])


def formatter(kind: str | None = None) -> logging.Formatter:
    """The formatter for `kind` ("json" or "text"; default: $MLOPS_LOG_FORMAT, else JSON)."""
    kind = (kind or os.environ.get(LOG_FORMAT_ENV) or "json").lower()
    if kind not in FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(FORMATS)}; got '{kind}'")
    return json_formatter() if kind == "json" else TextFormatter()


def configure(level: str = "INFO", kind: str | None = None, **fields: Any) -> None:
    """A workload's logging: one handler on stdout for every logger. `fields` (e.g. taskId) are
    added to each of its lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(kind))
    if fields:
        handler.addFilter(StaticFields(fields))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


class StaticFields(logging.Filter):
    """Adds the same fields to every record it sees (a workload's taskId)."""

    def __init__(self, fields: dict[str, Any]):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            record.__dict__.setdefault(name, value)
        return True
