"""Request ids: the client's X-Request-ID when it sends a usable one, else a new one. The id is
returned in the answer, passed to the model server, and written in the request's access line."""

import os
import re

HEADER = b"x-request-id"
_USABLE = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(sent: bytes | None) -> str:
    """`sent` (the header's raw value) if it is a plain token of at most 128 characters, which
    cannot break a header or a log line; otherwise a new random id."""
    if sent is not None and _USABLE.fullmatch(sent):
        return sent.decode("ascii")
    return os.urandom(16).hex()
