"""Prometheus metrics of one worker process, on a registry of its own.

A registry per daemon (not prometheus_client's global one) keeps tests and several daemons in
one process apart. Label values are bounded: the queue *kind* (``events`` or ``work``), an
outcome from a fixed set, a failure ``reason`` from the error hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
    published: Counter  # event type
    io_loop_beat: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry if registry is not None else CollectorRegistry()
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
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never observed); for tests and status output."""
        return self.registry.get_sample_value(name, labels) or 0.0
