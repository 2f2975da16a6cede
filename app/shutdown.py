"""Graceful shutdown: in-flight requests finish, and endless streams (log follows) close cleanly.

uvicorn waits for open requests before the app's lifespan ends, so a `follow=true` log stream
would hold the shutdown forever. `watch_signals` (called at start-up, in each worker) chains onto
uvicorn's own SIGINT/SIGTERM handlers and raises a flag the moment shutdown begins; streams
wrapped with `until_shutdown` then end with a last line telling the client to reconnect.
"""

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

_shutting_down = threading.Event()
CLOSING_LINE = b"\n[stream closed: the API is shutting down; reconnect to continue]\n"


def begin() -> None:
    _shutting_down.set()


def started() -> bool:
    return _shutting_down.is_set()


async def until_shutdown(stream: AsyncIterator[bytes], poll_seconds: float = 0.2) -> AsyncIterator[bytes]:
    iterator = stream.__aiter__()
    while True:
        next_chunk = asyncio.ensure_future(iterator.__anext__())
        while not next_chunk.done():
            if started():
                next_chunk.cancel()
                yield CLOSING_LINE
                return
            await asyncio.wait({next_chunk}, timeout=poll_seconds)
        try:
            chunk = next_chunk.result()
        except StopAsyncIteration:
            return
        yield chunk


def watch_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (e.g. an app served from a test's thread)
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def chained(signum: int, frame: Any, previous: Any = previous) -> None:
            begin()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, chained)
