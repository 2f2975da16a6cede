"""The API's Prometheus metrics, served at GET /metrics (names in the README's *Observability*).

Request metrics are counted where requests are seen whole: the data plane for its calls
(app/dataplane/calls.py) and AccessLogMiddleware for every other route. The state of tasks and
endpoints is read when Prometheus scrapes, from the runtime (the cluster, or the data directory),
so every API worker answers alike and a restart loses nothing.

With several API workers (uvicorn processes), `python -m app` sets PROMETHEUS_MULTIPROC_DIR before
they start, and a scrape sums every worker's counters (prometheus_client's multiprocess mode).
"""

import os
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. A predict through the API takes well under a millisecond to tens of seconds (a generation).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TRAINING_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)

API_REQUESTS = Counter("mlops_api_requests", "Requests the API answered, by route template, method and status",
                       ["route", "method", "status"])
API_DURATION = Histogram("mlops_api_request_duration_seconds", "Time to answer a request, by route template",
                         ["route", "method"], buckets=LATENCY_BUCKETS)
PREDICT_REQUESTS = Counter("mlops_predict_requests", "Data-plane calls (predict and OpenAI routes), by deployment",
                           ["task_id", "model_id", "route", "status"])
PREDICT_DURATION = Histogram("mlops_predict_request_duration_seconds",
                             "Data-plane call duration (a streamed answer: until its end), by deployment",
                             ["task_id", "model_id"], buckets=LATENCY_BUCKETS)
UPSTREAM_FAILURES = Counter("mlops_upstream_failures", "Model-server failures answered 502, 503 or 504",
                            ["task_id", "reason"])


class Families:
    """A collector over metric families made for one scrape."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(state: Iterable[Metric]) -> bytes:
    """The scrape's text: every worker's request metrics, and the state families given."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        requests = generate_latest(registry)
    else:
        requests = generate_latest(REGISTRY)
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(Families(state))
    return requests + generate_latest(snapshot)


def count_by(name: str, documentation: str, label: str, values: Iterable[str], known: Iterable[str]) -> Metric:
    """A gauge family counting `values`, with a zero for each `known` value not present."""
    counts = dict.fromkeys(known, 0)
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def durations_histogram(name: str, documentation: str, label: str,
                        durations: Iterable[tuple[str, float]]) -> Metric:
    """A histogram family over (label value, seconds) pairs, as they stand at this scrape."""
    by_label: dict[str, list[float]] = {}
    for value, seconds in durations:
        by_label.setdefault(value, []).append(seconds)
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, seconds in sorted(by_label.items()):
        buckets = [(str(bound), sum(1 for s in seconds if s <= bound)) for bound in TRAINING_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        family.add_metric([value], buckets, sum(seconds))
    return family


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


class RequestMetrics:
    """Counts requests into the metrics above. Label children are kept once made, so the busiest
    route pays a dictionary lookup, not prometheus_client's label resolution, per request."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._calls: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._failures: dict[tuple[str, str], Counter] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (API_REQUESTS.labels(route, method, str(status)),
                                              API_DURATION.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def call(self, task_id: str, model_id: str, route: str, status: int, seconds: float,
             failure: str | None) -> None:
        """A data-plane call: counted as an API request of its route template too."""
        key = (task_id, model_id, route, status)
        children = self._calls.get(key)
        if children is None:
            children = self._calls[key] = (PREDICT_REQUESTS.labels(task_id, model_id, route, str(status)),
                                           PREDICT_DURATION.labels(task_id, model_id))
        children[0].inc()
        children[1].observe(seconds)
        if failure is not None:
            counter = self._failures.get((task_id, failure))
            if counter is None:
                counter = self._failures[(task_id, failure)] = UPSTREAM_FAILURES.labels(task_id, failure)
            counter.inc()
