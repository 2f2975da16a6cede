"""One log format for the control plane and its workloads (the trainer, the model server).

Each line is a JSON object, `time` (RFC 3339, UTC), `level`, `logger`, `message`, then the line's
fields (`requestId`, `taskId`, an access line's `method`, `path`, `status`, `durationMs` ...), as log
shippers and Loki read them. MLOPS_LOG_FORMAT=text gives a readable line for a terminal instead.
Fields are passed with `extra=`; a field is never a token, a secret or a request body.
"""

import io
import logging
import os
import re
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

LOG_FORMAT_ENV = "MLOPS_LOG_FORMAT"
REQUEST_ID_HEADER = b"x-request-id"
_USABLE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
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
    """A workload's logging: one handler on stdout for every logger, and what libraries print
    (MLflow's run links, a traceback) turned into lines of the same format. `fields` (e.g. taskId)
    are added to each line."""
    # MLflow gives its loggers a handler of its own when imported, unless told not to: its lines
    # then reach ours, in the same format.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    fields = {name: value for name, value in fields.items() if value is not None}
    handler = logging.StreamHandler(sys.__stdout__)
    handler.setFormatter(formatter(kind))
    if fields:
        handler.addFilter(StaticFields(fields))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    sys.stdout = LineLogger(logging.getLogger("stdout"), logging.INFO)
    sys.stderr = LineLogger(logging.getLogger("stderr"), logging.WARNING)


class LineLogger(io.TextIOBase):
    """A text stream whose every line becomes a log record, for code that prints."""

    def __init__(self, logger: logging.Logger, level: int):
        self.logger = logger
        self.level = level
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.logger.log(self.level, self.pending.rstrip())
        self.pending = ""


class StaticFields(logging.Filter):
    """Adds the same fields to every record it sees (a workload's taskId)."""

    def __init__(self, fields: dict[str, Any]):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            record.__dict__.setdefault(name, value)
        return True


def event(message: str, **fields: Any) -> None:
    """A line of a training's progress (an epoch, a result), with its figures as fields."""
    logging.getLogger("mlops.trainer").info(message, extra=fields)


def request_id(sent: bytes | None) -> str:
    """The caller's X-Request-ID (the header's raw value) if it is a plain token of at most 128
    characters, which cannot break a header or a log line; otherwise a new random id."""
    if sent is not None and _USABLE_REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    return os.urandom(16).hex()


def access_line(logger: logging.Logger, method: str, path: str, status: int, seconds: float,
                **fields: Any) -> None:
    """One line for one answered request. The record is made and handled directly: logger.info
    would also walk the stack to find its caller, which costs more than the rest of the line."""
    if logger.isEnabledFor(logging.INFO):
        fields.update(method=method, path=path, status=status, durationMs=round(seconds * 1000, 3))
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s %s %d", (method, path, status),
                                        None, extra=fields))
