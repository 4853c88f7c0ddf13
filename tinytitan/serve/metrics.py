"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, backend):
        self.backend = backend
        self.registry = registry = CollectorRegistry()
        self.http = Counter("tinytitan_http_requests", "HTTP responses by route and status code",
                            ["route", "status"], registry=registry)
        self.requests = Counter("tinytitan_generation_requests", "Generation requests by route, model and outcome "
                                "(completed, cancelled, failed, rejected)", ["route", "model", "outcome"],
                                registry=registry)
        self.prompt_tokens = Counter("tinytitan_prompt_tokens", "Prompt tokens processed", ["model"], registry=registry)
        self.completion_tokens = Counter("tinytitan_completion_tokens", "Tokens generated", ["model"],
                                         registry=registry)
        self.latency = Histogram("tinytitan_request_seconds", "Time from admission to the last token",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("tinytitan_queue_wait_seconds", "Time a request waited for a slot",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("tinytitan_time_to_first_token_seconds", "Time from admission to the first "
                                     "token", buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("tinytitan_queue_depth", "Requests admitted and waiting for a slot", registry=registry)
        self.busy = Gauge("tinytitan_slots_busy", "Slots generating now", registry=registry)
        self.slots = Gauge("tinytitan_slots", "Generation slots", registry=registry)
        self.capacity = Gauge("tinytitan_capacity", "Requests admitted at most (slots + queue)", registry=registry)
        self._recent = deque(maxlen=32)  # recent request durations, for Retry-After

    def response(self, route: str, status: int) -> None:
        self.http.labels(route, str(status)).inc()

    def admitted(self, route: str, model: str) -> None:
        pass  # counted when it ends, by outcome

    def rejected(self, route: str, model: str = "") -> None:
        self.requests.labels(route, model, "rejected").inc()

    def finished(self, route: str, model: str, job, first_token: float | None, usage, status: int) -> None:
        outcome = {200: "completed", 499: "cancelled"}.get(status, "failed")
        self.requests.labels(route, model, outcome).inc()
        self.prompt_tokens.labels(model).inc(usage[0])
        self.completion_tokens.labels(model).inc(usage[1])
        now = time.perf_counter()
        self.latency.labels(route).observe(now - job.queued_at)
        if job.started_at is not None:
            self.queue_wait.observe(job.started_at - job.queued_at)
        if first_token is not None:
            self.first_token.observe(first_token - job.queued_at)
        if status == 200:
            self._recent.append(now - job.queued_at)

    def typical_seconds(self) -> float:
        """How long a slot is likely to stay busy: the median of recent requests (1 s before any)."""
        if not self._recent:
            return 1.0
        ordered = sorted(self._recent)
        return ordered[len(ordered) // 2]

    def render(self) -> bytes:
        self.queue_depth.set(self.backend.waiting)
        self.busy.set(self.backend.running)
        self.slots.set(len(self.backend.slots))
        self.capacity.set(self.backend.capacity)
        return generate_latest(self.registry)
