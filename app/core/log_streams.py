"""A bound on the log streams (`?follow=true`) one API worker keeps open. Each can last as long as
a training does, and on a cluster each holds a thread blocked on the Kubernetes API's stream: past
the bound a follower is answered 429 with Retry-After, instead of taking threads or memory the
other calls need."""

from collections.abc import AsyncIterator

from app.errors import TooManyRequests

RETRY_AFTER_SECONDS = 10


class LogStreams:
    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0

    def admit(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`stream`, counted while it is read; raises TooManyRequests when `limit` are open."""
        if self.open >= self.limit:
            raise TooManyRequests(f"{self.limit} log streams are open on this API worker (MLOPS_MAX_LOG_FOLLOWERS); "
                                  f"retry later, or read the log without follow", retry_after=RETRY_AFTER_SECONDS)
        return self._counted(stream)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        # Counted from its first read: a stream never read (its caller gone first) holds nothing.
        self.open += 1
        try:
            async for chunk in stream:
                yield chunk
        finally:
            self.open -= 1
