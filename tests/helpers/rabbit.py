"""RabbitMQ helpers for tests: look inside queues, and force-close a client's connection."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pika

from chimp_worker.broker import BrokerOptions, declare_topology
from chimp_worker.config import Settings


@dataclass(frozen=True)
class QueuedMessage:
    body: bytes
    headers: dict[str, Any]
    message_type: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class RabbitProbe:
    """A plain pika connection for tests to count, read and delete queues."""

    def __init__(self, amqp_url: str) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._channel = self._connection.channel()

    def count(self, queue: str) -> int:
        return self._channel.queue_declare(queue, passive=True).method.message_count

    def take_all(self, queue: str) -> list[QueuedMessage]:
        """Remove and return every ready message of a queue."""
        taken = []
        while True:
            method, properties, body = self._channel.basic_get(queue)
            if method is None:
                return taken
            self._channel.basic_ack(method.delivery_tag)
            taken.append(QueuedMessage(body, dict(properties.headers or {}), properties.type))

    def declare(self, settings: Settings) -> None:
        """The worker's topology, so raw messages published before a worker starts are kept."""
        declare_topology(self._connection.channel(), BrokerOptions.from_settings(settings))

    def publish_raw(self, queue: str, body: bytes) -> None:
        self._channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))

    def wait_for_count(self, queue: str, expected: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while (count := self.count(queue)) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return count

    def delete(self, settings: Settings) -> None:
        channel = self._connection.channel()
        for queue in (settings.events_queue, settings.work_queue, settings.results_queue):
            if queue:
                channel.queue_delete(queue)
                channel.queue_delete(f"dlq.{queue}")
        channel.exchange_delete(settings.results_exchange)

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


def broker_connection_pids(connection_name: str) -> list[str]:
    """Erlang pids of the broker connections whose client named itself ``connection_name``."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split("\t", 1)[0] for line in listing.splitlines() if connection_name in line]


def close_broker_connection(connection_name: str) -> int:
    """``rabbitmqctl close_connection`` for each connection with that name; returns how many."""
    pids = broker_connection_pids(connection_name)
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by test"],
            capture_output=True,
            check=True,
            timeout=60,
        )
    return len(pids)
