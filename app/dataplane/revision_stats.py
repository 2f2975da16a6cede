"""What each revision of a deployment answered lately: the figures a canary is judged by.

Kept in memory by each API worker, from the calls it served (app/dataplane/calls.py records
every one): the status shows them, and the canary guard (app/core/canary_guard.py) aborts a
canary that breaks its thresholds. Prometheus has the same calls across workers
(mlops_predict_requests_total by revision).
"""

import time
from collections import deque
from dataclasses import dataclass

# Samples kept per revision: enough for a p99 over a busy window, bounded in memory (~5 MB).
MAX_SAMPLES = 100_000
LONGEST_WINDOW_SECONDS = 3600.0


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    p99_seconds: float | None

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class RevisionStats:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        # (task id, revision) -> (when, a 5xx, seconds), oldest first
        self._samples: dict[tuple[str, int], deque[tuple[float, bool, float]]] = {}

    def record(self, task_id: str, revision: int, status: int, seconds: float) -> None:
        samples = self._samples.get((task_id, revision))
        if samples is None:
            samples = self._samples[(task_id, revision)] = deque(maxlen=MAX_SAMPLES)
        samples.append((self._clock(), status >= 500, seconds))

    def summary(self, task_id: str, revision: int, window_seconds: float) -> Summary:
        samples = self._samples.get((task_id, revision))
        if not samples:
            return Summary(0, 0, None)
        now = self._clock()
        while samples and samples[0][0] < now - LONGEST_WINDOW_SECONDS:
            samples.popleft()
        recent = [(error, seconds) for when, error, seconds in samples if when >= now - window_seconds]
        if not recent:
            return Summary(0, 0, None)
        durations = sorted(seconds for _, seconds in recent)
        p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
        return Summary(len(recent), sum(1 for error, _ in recent if error), p99)

    def forget(self, task_id: str, keep: set[int]) -> None:
        """Drop the samples of a task's revisions other than `keep` (retired or aborted ones)."""
        for key in [key for key in self._samples if key[0] == task_id and key[1] not in keep]:
            del self._samples[key]
