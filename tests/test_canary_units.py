"""The canary's parts on their own: weighted choice in the data plane, the per-revision window,
the thresholds that abort a canary, and the revision history's rules."""

import random
from datetime import UTC, datetime

import pytest

from app.core.canary_guard import broken_threshold
from app.core.revisions import KEPT_REVISIONS, AutoAbort, CanaryRecord, first_rollout
from app.dataplane.admission import Admitted
from app.dataplane.plane import DataPlane
from app.dataplane.revision_stats import RevisionStats
from app.runtime.base import Canary, Endpoint, EndpointCache
from app.schemas.inference import ServedModel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plane_with(endpoints: EndpointCache) -> DataPlane:
    plane = DataPlane.__new__(DataPlane)  # only choose_upstream is exercised: no client, no log
    plane.endpoints = endpoints
    return plane


@pytest.mark.parametrize("weight", [1, 20, 50, 99])
def test_the_canary_takes_its_weight_of_the_calls(weight: int) -> None:
    random.seed(weight)
    endpoints = EndpointCache()
    stable = Endpoint("t", "http://stable", True, "p", revision=1)
    endpoints.put(stable)
    endpoints.put_canary("t", Canary(Endpoint("t", "http://canary", True, "p", revision=2), weight))
    plane = plane_with(endpoints)
    admitted = Admitted(stable, 100, 1.0, False)
    chosen = [plane.choose_upstream(admitted).revision for _ in range(20_000)]
    assert abs(chosen.count(2) / len(chosen) - weight / 100) < 0.015


def test_a_canary_out_of_rotation_gets_no_call_and_comes_back() -> None:
    endpoints = EndpointCache()
    stable = Endpoint("t", "http://stable", True, "p", revision=1)
    endpoints.put(stable)
    endpoints.put_canary("t", Canary(Endpoint("t", "http://canary", True, "p", revision=2), 99))
    endpoints.mark_unready("t", "refused", "http://canary")  # the data plane saw it refuse a call
    assert endpoints.get("t").ready and not endpoints.canary("t").endpoint.ready
    plane = plane_with(endpoints)
    assert {plane.choose_upstream(Admitted(stable, 1, 1.0, False)).revision for _ in range(200)} == {1}
    endpoints.mark_unready("t", "refused", "http://stable")
    assert not endpoints.get("t").ready


def test_the_window_forgets_old_calls_and_counts_5xx() -> None:
    clock = Clock()
    stats = RevisionStats(clock)
    for i in range(100):
        stats.record("t", 2, 502 if i % 10 == 0 else 200, 0.01 * (i + 1))
    summary = stats.summary("t", 2, 60)
    assert (summary.requests, summary.errors) == (100, 10) and summary.error_ratio == 0.1
    assert summary.p99_seconds == pytest.approx(1.0)
    clock.now += 61
    assert stats.summary("t", 2, 60).requests == 0
    stats.record("t", 2, 200, 0.5)
    assert stats.summary("t", 2, 60).requests == 1
    stats.forget("t", keep={1})
    assert stats.summary("t", 2, 3600).requests == 0


def test_thresholds_abort_on_errors_or_latency_only_after_enough_calls() -> None:
    clock = Clock()
    stats = RevisionStats(clock)
    limits = AutoAbort(max_error_ratio=0.05, max_p99_seconds=0.5, window_seconds=30, min_requests=20)
    for _ in range(19):
        stats.record("t", 2, 500, 0.01)
    assert broken_threshold(stats, "t", 2, limits) is None  # too few calls to judge
    stats.record("t", 2, 500, 0.01)
    reason = broken_threshold(stats, "t", 2, limits)
    assert reason is not None and "100.0% of its answers were errors" in reason and "allows 5.0%" in reason
    clock.now += 31  # the window moved on: judged afresh
    for _ in range(40):
        stats.record("t", 2, 200, 0.9)
    reason = broken_threshold(stats, "t", 2, limits)
    assert reason is not None and "p99 latency was 0.900 s" in reason
    clock.now += 31
    for _ in range(40):
        stats.record("t", 2, 200, 0.1)
    assert broken_threshold(stats, "t", 2, limits) is None


def test_history_keeps_the_last_revisions_and_always_the_stable_and_canary_ones() -> None:
    rollout = first_rollout(ServedModel(mlflow_run_id="r1"), replicas=1)
    for n in range(2, 15):
        rollout = rollout.with_revision(ServedModel(mlflow_run_id=f"r{n}"), "updated")
    assert len(rollout.history) == KEPT_REVISIONS and rollout.revision == 14
    assert [r.revision for r in rollout.history] == list(range(5, 15))
    record = rollout.new_record(ServedModel(mlflow_run_id="c"), "canary")
    rollout = rollout.model_copy(update={"canary": CanaryRecord(revision=record.revision, weight=10,
                                                                started_at=datetime.now(UTC))})
    rollout = rollout.model_copy(update={"history": rollout.keep([*rollout.history, record])})
    assert rollout.find(15) is not None and rollout.find(14) is not None and rollout.newest.revision == 14
    assert rollout.previous().revision == 13  # the canary is not "before" the stable one
    aborted = rollout.replaced(rollout.find(13).model_copy(update={"aborted": "by request"}))
    assert aborted.previous().revision == 12
