"""The canary guard: aborts, by itself, a canary whose recent answers break its autoAbort
thresholds (a share of 5xx answers, a p99 latency, over a window), and says so in its revision.

It runs in every API worker, on the calls that worker served (app/dataplane/revision_stats.py):
each worker sees its share of the traffic, split by the same weights, so each judges the same
ratios. An abort is an ordinary update of the deployment; two workers aborting at once is harmless
(the second finds no canary, or a changed deployment, and stops there).
"""

import asyncio
import contextlib
import logging
import time

from app.core.blocking import run_blocking
from app.core.deployments import DeploymentService
from app.core.manifests import KIND_INFERENCE
from app.core.revisions import AutoAbort, rollout_of_state
from app.dataplane.revision_stats import RevisionStats
from app.errors import MlopsError
from app.runtime.base import EndpointCache

log = logging.getLogger("mlops.canary")
CHECK_EVERY_SECONDS = 1.0
# A canary's thresholds are read again after this long (a PATCH may not change them, but a
# restarted canary of the same revision number could).
THRESHOLDS_FOR_SECONDS = 10.0


def broken_threshold(stats: RevisionStats, task_id: str, revision: int, auto_abort: AutoAbort) -> str | None:
    """Why the canary must be aborted now, or None."""
    summary = stats.summary(task_id, revision, auto_abort.window_seconds)
    if summary.requests < auto_abort.min_requests:
        return None
    window = f"over the last {auto_abort.window_seconds:g} s ({summary.requests} predicts)"
    if summary.error_ratio > auto_abort.max_error_ratio:
        return (f"{summary.error_ratio:.1%} of its answers were errors {window}; "
                f"autoAbort allows {auto_abort.max_error_ratio:.1%}")
    if summary.p99_seconds is not None and summary.p99_seconds > auto_abort.max_p99_seconds:
        return (f"its p99 latency was {summary.p99_seconds:.3f} s {window}; "
                f"autoAbort allows {auto_abort.max_p99_seconds:g} s")
    return None


class CanaryGuard:
    def __init__(self, deployments: DeploymentService, endpoints: EndpointCache, stats: RevisionStats,
                 interval: float = CHECK_EVERY_SECONDS):
        self.deployments = deployments
        self.endpoints = endpoints
        self.stats = stats
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        # task id -> (canary revision, its autoAbort, when read)
        self._thresholds_by_task: dict[str, tuple[int, AutoAbort | None, float]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for task_id in self.endpoints.canary_task_ids():
                try:
                    await self.check(task_id)
                except MlopsError as exc:  # the deployment changed or went meanwhile: judged again next time
                    log.info("canary of %s not judged: %s", task_id, exc.message, extra={"taskId": task_id})
                except Exception:  # the guard must outlive any one failure
                    log.exception("canary guard failed on %s", task_id, extra={"taskId": task_id})

    async def _thresholds(self, task_id: str, revision: int) -> AutoAbort | None:
        """The canary's autoAbort, read from its deployment at most every THRESHOLDS_FOR_SECONDS."""
        cached = self._thresholds_by_task.get(task_id)
        now = time.monotonic()
        if cached is not None and cached[0] == revision and now - cached[2] < THRESHOLDS_FOR_SECONDS:
            return cached[1]
        state = await run_blocking(self.deployments.runtime.get, KIND_INFERENCE, task_id)
        record = rollout_of_state(state).canary if state is not None else None
        auto_abort = record.auto_abort if record is not None and record.revision == revision else None
        self._thresholds_by_task[task_id] = (revision, auto_abort, now)
        return auto_abort

    async def check(self, task_id: str) -> None:
        canary = self.endpoints.canary(task_id)
        if canary is None or canary.endpoint.revision is None:
            return
        revision = canary.endpoint.revision
        auto_abort = await self._thresholds(task_id, revision)
        if auto_abort is None:
            return
        reason = broken_threshold(self.stats, task_id, revision, auto_abort)
        if reason is None:
            return
        log.warning("aborting the canary (revision %s) of %s: %s", revision, task_id, reason,
                    extra={"taskId": task_id, "revision": revision})
        self._thresholds_by_task.pop(task_id, None)
        await self.deployments.abort_canary(task_id, reason=f"by the control plane: {reason}")
