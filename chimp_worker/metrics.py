"""Prometheus metrics of one worker process, on a registry of its own.

A registry per daemon (not prometheus_client's global one) keeps tests and several daemons in
one process apart. Label values are bounded: the queue *kind* (``events`` or ``work``), an
outcome from a fixed set, a failure ``reason`` from the error hierarchy. Besides the worker's
own series the registry carries prometheus_client's process collector (resident memory, CPU
seconds, open files: the models take 2-2.5 GiB) and platform collector (``python_info``), and
two info metrics saying which analyser and which model files (by sha256) produce the results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from chimp_worker import __version__
from chimp_worker.analysis import ModelRef
from chimp_worker.deadlines import abandoned_threads

# Inference of a work item takes seconds to about a minute; a stuck one, many minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
IMAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


@dataclass(frozen=True)
class WorkerMetrics:
    registry: CollectorRegistry
    messages: Counter  # queue, outcome: acked | requeued | dead_lettered | stale
    images: Counter  # outcome: done | unchanged | failed | skipped
    failures: Counter  # reason: image and message failure reasons
    in_flight: Gauge
    message_seconds: Histogram  # queue
    image_seconds: Histogram
    reconnects: Counter
    database_retries: Counter
    database_holds: Counter  # outcome: resumed | returned
    database_down: Gauge
    work_stalled: Gauge
    published: Counter  # event type
    io_loop_beat: Gauge
    analyser: Info
    model: Info  # role

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Gauge(
            "chimp_abandoned_threads",
            "Fetch or analysis threads given up at their deadline and still running "
            "(blocked on a hung mount or device, or finishing late)",
            registry=registry,
        ).set_function(abandoned_threads)
        return cls(
            registry=registry,
            messages=Counter(
                "chimp_messages",
                "Messages finished, by queue kind and outcome",
                ["queue", "outcome"],
                registry=registry,
            ),
            images=Counter(
                "chimp_images", "Images processed, by outcome", ["outcome"], registry=registry
            ),
            failures=Counter(
                "chimp_failures",
                "Failed images and dead-lettered messages, by reason",
                ["reason"],
                registry=registry,
            ),
            in_flight=Gauge(
                "chimp_messages_in_flight",
                "Messages received and not yet settled",
                registry=registry,
            ),
            message_seconds=Histogram(
                "chimp_message_seconds",
                "Time from delivery to settlement",
                ["queue"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            image_seconds=Histogram(
                "chimp_image_seconds",
                "Fetch + analysis time per image",
                buckets=IMAGE_BUCKETS,
                registry=registry,
            ),
            reconnects=Counter(
                "chimp_broker_reconnects",
                "Broker connections lost or refused (each then retried)",
                registry=registry,
            ),
            database_retries=Counter(
                "chimp_database_retries",
                "Units of work retried after a transient database error",
                registry=registry,
            ),
            database_holds=Counter(
                "chimp_database_holds",
                "Messages held through a database outage, by how the hold ended "
                "(resumed: the database came back; returned: requeued at the bound)",
                ["outcome"],
                registry=registry,
            ),
            database_down=Gauge(
                "chimp_database_down",
                "1 while the database does not answer (consumers paused, messages held)",
                registry=registry,
            ),
            work_stalled=Gauge(
                "chimp_work_stalled",
                "Messages in hand that made no progress past their step's deadline "
                "(liveness fails while this is above 0)",
                registry=registry,
            ),
            published=Counter(
                "chimp_events_published",
                "Events published with confirms, by type",
                ["type"],
                registry=registry,
            ),
            io_loop_beat=Gauge(
                "chimp_io_loop_last_beat_seconds",
                "Unix time of the broker I/O loop's last iteration",
                registry=registry,
            ),
            analyser=Info(
                "chimp_analyser",
                "The analyser writing results: name, ISPyB score schema, worker version",
                registry=registry,
            ),
            model=Info(
                "chimp_model",
                "Model files in use, by role: architecture name and sha256 of the weights",
                ["role"],
                registry=registry,
            ),
        )

    def describe_analyser(self, name: str, schema_name: str, models: Iterable[ModelRef]) -> None:
        """Fill the info metrics (once, at start)."""
        self.analyser.info({"analyser": name, "schema": schema_name, "version": __version__})
        for model in models:
            self.model.labels(model.role).info({"name": model.name, "sha256": model.sha256})

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never observed); for tests and status output."""
        return self.registry.get_sample_value(name, labels) or 0.0
