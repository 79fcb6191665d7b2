"""Prometheus metrics, aggregate only: never labelled by caller, session or group."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """One registry per app; under several gunicorn workers, values are shared through
    ``PROMETHEUS_MULTIPROC_DIR`` (set by ``veil serve``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "veil_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.upstream_latency = Histogram(
            "veil_upstream_latency_seconds",
            "Time for the activity store to answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.policy_latency = Histogram(
            "veil_policy_evaluation_seconds",
            "Time for one policy decision (one per upstream answer)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows_hidden = Counter(
            "veil_rows_hidden", "Private rows removed from answers", registry=self.registry
        )
        self.rows_revealed = Counter(
            "veil_rows_revealed",
            "Private rows shown through audited reveal sessions",
            registry=self.registry,
        )
        self.policy_failures = Counter(
            "veil_policy_failures",
            "Decisions that failed closed (engine error or bad answer)",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
