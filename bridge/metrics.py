"""Prometheus metrics of one bridge process, on a registry of its own (no globals)."""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INCIDENT_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    28800.0, 86400.0, 259200.0)  # fmt: skip
"""Seconds from declaring an incident: 30 s up to 3 days."""


class BridgeMetrics:
    """Every metric the bridge exports; one instance per composition root.

    With ``event_loop``, ``bridge_asyncio_tasks`` counts that loop's tasks (see
    ``observe_event_loop``)."""

    def __init__(self, *, event_loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.events_received = Counter(
            "bridge_events_received",
            "Events received from a platform, by platform and kind.",
            ["platform", "kind"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "bridge_events_duplicate",
            "Redelivered events acknowledged without processing, by platform.",
            ["platform"],
            registry=r,
        )
        self.append_seconds = Histogram(
            "bridge_timeline_append_seconds",
            "Time to store one request's events durably (with their outbox queues).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_refused = Counter(
            "bridge_requests_refused",
            "Platform requests answered 503 at once because too many were being stored.",
            ["platform"],
            registry=r,
        )
        self.store_errors = Counter(
            "bridge_store_errors",
            "Timeline store operations that failed.",
            ["operation"],
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries",
            "Outbound deliveries, by target platform and outcome (sent, retry, failed).",
            ["platform", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "bridge_delivery_seconds",
            "From receiving an event to its delivery on the other platform.",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "bridge_commands",
            "Chat commands handled, by outcome (ok, usage, denied, failed, error).",
            ["outcome"],
            registry=r,
        )
        self.incidents_declared = Counter(
            "bridge_incidents_declared",
            "Incidents declared from chat, by severity at declaration.",
            ["severity"],
            registry=r,
        )
        self.incident_acknowledge_seconds = Histogram(
            "bridge_incident_acknowledge_seconds",
            "From declaring an incident to its first acknowledgement.",
            buckets=INCIDENT_BUCKETS,
            registry=r,
        )
        self.incident_resolve_seconds = Histogram(
            "bridge_incident_resolve_seconds",
            "From declaring an incident to its resolution (again after each reopen).",
            buckets=INCIDENT_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "bridge_ready",
            "1 when the process reports ready, by dependency.",
            ["dependency"],
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            "bridge_asyncio_tasks",
            "Unfinished tasks of the process's event loop, counted at each scrape.",
            registry=r,
        )
        if event_loop is not None:
            self.observe_event_loop(event_loop)

    def observe_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count ``loop``'s unfinished tasks when the registry is collected, which may
        happen on another thread (``asyncio.all_tasks`` copies its task set safely)."""
        self.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
