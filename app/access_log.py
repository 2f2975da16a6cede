"""uvicorn's access log line for predict calls answered outside ASGI, written in batches.

Through the logging module, uvicorn's access line costs more CPU than forwarding the predict call
it records (docs/benchmarks.md). With uvicorn's own access logging in place (one stream handler,
a formatter without time fields), the line is formatted once per status, as that formatter
formats it, and lines made in the same turn of the event loop are written together. With any
other logging set-up (a log config of the user's), each line goes through the logger as usual.
"""

import asyncio
import logging

ACCESS_LOGGER = "uvicorn.access"
ACCESS_MESSAGE = '%s - "%s %s HTTP/%s" %d'  # uvicorn's own, so its formatter reads the fields
# Formatter fields that differ from one line to the next: such a set-up is logged line by line.
_VARYING_FIELDS = ("asctime", "created", "msecs", "relativeCreated", "thread", "process", "taskName")
_CLIENT, _PATH = "\x00client\x00", "\x00path\x00"


class AccessLog:
    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._handler: logging.StreamHandler | None = None
        self._checked = False
        self._templates: dict[tuple[str, str, int], tuple[str, str, str] | None] = {}
        self._pending: list[str] = []

    def _batch_handler(self) -> logging.StreamHandler | None:
        """The stream handler lines can be batched for, or None (checked once: uvicorn configures
        logging before it loads the app)."""
        if not self._checked:
            self._checked = True
            handlers = self.logger.handlers
            if (len(handlers) == 1 and type(handlers[0]) is logging.StreamHandler and not handlers[0].filters
                    and not self.logger.filters and not self.logger.propagate):
                formatter = handlers[0].formatter
                fmt = getattr(formatter, "_fmt", None) or ""
                if formatter is not None and not any(field in fmt for field in _VARYING_FIELDS):
                    self._handler = handlers[0]
        return self._handler

    def _template(self, handler: logging.StreamHandler, method: str, version: str, status: int
                  ) -> tuple[str, str, str] | None:
        """The formatted line around the client and path, as three parts; None if the formatter
        does not keep them verbatim."""
        key = (method, version, status)
        if key not in self._templates:
            record = self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, ACCESS_MESSAGE,
                                            (_CLIENT, method, _PATH, version, status), None)
            text = handler.format(record) + handler.terminator
            head, client, rest = text.partition(_CLIENT)
            middle, path, tail = rest.partition(_PATH)
            ok = client and path and _CLIENT not in tail and _PATH not in tail and _PATH not in head
            self._templates[key] = (head, middle, tail) if ok else None
        return self._templates[key]

    def log(self, client: str, method: str, path: str, version: str, status: int) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handler = self._batch_handler()
        template = self._template(handler, method, version, status) if handler is not None else None
        if template is None:
            self.logger.info(ACCESS_MESSAGE, client, method, path, version, status)
            return
        self._pending.append(template[0] + client + template[1] + path + template[2])
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if not self._pending or self._handler is None:
            return
        text, self._pending = "".join(self._pending), []
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:  # as logging does: a broken stream never breaks the request path
            pass
        finally:
            handler.release()
