"""Prometheus metrics, one registry per app so that tests can run several apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trunkline_requests",
            "Prediction requests by model, task, route and status",
            ["model", "task", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "trunkline_request_latency_seconds",
            "End-to-end prediction latency",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "trunkline_queue_time_seconds",
            "Time a request waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "trunkline_compute_time_seconds",
            "Compute time of the batch a request ran in",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "trunkline_batch_size",
            "Instances per executed batch",
            ["model", "trunk_width"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.degraded = Counter(
            "trunkline_degraded",
            "Requests answered on a cheaper route than their budget",
            ["model", "task"],
            registry=r,
        )
        self.answered_by = Counter(
            "trunkline_auto_answers",
            "Budget auto: instances answered per task and rung (0: the first)",
            ["model", "task", "rung"],
            registry=r,
        )
        self.in_flight = Gauge("trunkline_in_flight_requests", "Requests being served", ["model"], registry=r)
        self.queue_depth = Gauge(
            "trunkline_queue_depth", "Instances waiting to be batched", ["model"], registry=r
        )

    def count(self, model: str, tasks: list[str], routes: dict[str, str], status: int) -> None:
        """trunkline_requests by model, task and route, as far as the request got."""
        for t in tasks or [""]:
            self.requests.labels(model, t, routes.get(t, ""), str(status)).inc()
