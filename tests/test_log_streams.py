"""Followers that cannot starve the API: past MLOPS_MAX_LOG_FOLLOWERS open log streams a follower
is answered 429 with Retry-After, status calls keep answering, and a stream that ends (or whose
reader leaves) frees its place."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.log_streams import LogStreams
from app.errors import TooManyRequests
from tests.support import regression_csv, wait_until


async def endless(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


def test_streams_are_counted_while_read_and_refused_past_the_limit() -> None:
    async def scenario() -> None:
        streams = LogStreams(limit=2)
        first, second = streams.admit(endless([b"a", b"b"])), streams.admit(endless([b"c"]))
        assert await anext(first) == b"a" and await anext(second) == b"c"
        assert streams.open == 2
        with pytest.raises(TooManyRequests) as refused:
            streams.admit(endless([]))
        assert refused.value.status_code == 429 and refused.value.headers["Retry-After"]
        assert [chunk async for chunk in second] == [] and streams.open == 1  # ended: its place is free
        await first.aclose()  # its reader left
        assert streams.open == 0
        assert [chunk async for chunk in streams.admit(endless([b"x"]))] == [b"x"]

    asyncio.run(scenario())


def test_the_api_answers_429_past_the_bound_and_status_calls_still_answer(api_factory, tmp_path) -> None:
    api = api_factory(MLOPS_MAX_LOG_FOLLOWERS="2")
    csv = regression_csv(tmp_path / "data.csv", rows=2000)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        created = client.post("/api/v1/train/jobs", json={
            "taskId": "long-train", "experimentName": "followers", "modelProfile": "tabular_regression",
            "datasetPath": str(csv), "hyperparameters": {"numEpoch": 3000, "numBatch": 8}})
        assert created.status_code == 201, created.text
        wait_until(lambda: client.get("/api/v1/train/jobs/long-train/status").json()["status"] == "Running",
                   timeout=60, what="the training to run")
        stop = threading.Event()
        opened = threading.Semaphore(0)

        def follow() -> None:
            with httpx.Client(base_url=api.url, timeout=60) as own, \
                    own.stream("GET", "/api/v1/train/jobs/long-train/logs", params={"follow": "true"}) as stream:
                assert stream.status_code == 200
                opened.release()
                for _ in stream.iter_raw():
                    if stop.is_set():
                        return

        followers = [threading.Thread(target=follow, daemon=True) for _ in range(2)]
        for thread in followers:
            thread.start()
        assert opened.acquire(timeout=30) and opened.acquire(timeout=30)
        try:
            refused = client.get("/api/v1/train/jobs/long-train/logs", params={"follow": "true"})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_requests" and int(refused.headers["retry-after"]) > 0
            started = time.monotonic()
            assert client.get("/api/v1/train/jobs/long-train/status").status_code == 200
            assert client.get("/api/v1/train/jobs").status_code == 200
            assert time.monotonic() - started < 5
            assert client.get("/api/v1/train/jobs/long-train/logs", params={"tail": 5}).status_code == 200
        finally:
            stop.set()
            assert client.delete("/api/v1/train/jobs/long-train").status_code == 200
            for thread in followers:
                thread.join(30)
