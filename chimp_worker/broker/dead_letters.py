"""The dead-letter queues ``dlq.<queue>``: read, move back and remove messages, with pika.

What the ``chimp-worker dlq`` commands do, without ever losing a message:

- **reading** takes messages with ``basic_get`` unacknowledged on a channel of its own and
  returns them by closing that channel: RabbitMQ puts them back where they were (a
  ``basic_nack`` with requeue would move a quorum queue's message to the back, and count as a
  failed delivery);
- **reinjecting** publishes a copy to the queue the message died in, with publisher confirms
  and ``mandatory``, and acks the dead letter only after the broker confirmed the copy: a crash
  in between leaves a duplicate, which the worker's idempotent writes absorb, never a loss;
- **purging** acks the chosen messages (after writing each to a JSON file, when asked).

Why a message died comes from the worker's own headers (``x-chimp-reason``, ``-detail``,
``-source-queue``, ``-dead-lettered-at``) or, for one the broker dead-lettered after the
delivery limit, from RabbitMQ's (``x-first-death-reason``, ``x-death``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from chimp_worker.broker import (
    _CONNECTION_ERRORS,
    DLQ_PREFIX,
    HEADER_DEAD_LETTERED_AT,
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_QUEUE,
    BrokerOptions,
    _properties,
    _publish,
    _translated,
    connection_parameters,
    dead_letter_queue,
)
from chimp_worker.errors import NotFoundError, UnroutableMessageError

RETURN_WAIT_S = 5.0  # longest wait for returned messages to show as ready again
HEADER_REINJECTED_FROM = "x-chimp-reinjected-from"
HEADER_REINJECTED_AT = "x-chimp-reinjected-at"
HEADER_REINJECTIONS = "x-chimp-reinjections"
# Headers that describe a previous death: a reinjected message starts afresh without them.
DEATH_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
    "x-delivery-count",
    HEADER_REASON,
    HEADER_DETAIL,
    HEADER_SOURCE_QUEUE,
    HEADER_DEAD_LETTERED_AT,
)


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter queue, as read (``position`` 1 is the oldest)."""

    queue: str
    position: int
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        return self.properties.get("message_id")

    @property
    def reason(self) -> str:
        """The worker's reason, else the broker's (``delivery_limit``, ``rejected``...)."""
        reason = self.headers.get(HEADER_REASON) or self.headers.get("x-first-death-reason")
        if not reason and self._deaths:
            reason = self._deaths[0].get("reason")
        return _text(reason) or "unknown"

    @property
    def detail(self) -> str:
        return _text(self.headers.get(HEADER_DETAIL)) or ""

    @property
    def source_queue(self) -> str:
        """Where the message was consumed from when it died: where a reinjection sends it."""
        source = self.headers.get(HEADER_SOURCE_QUEUE) or self.headers.get("x-first-death-queue")
        if not source and self._deaths:
            source = self._deaths[0].get("queue")
        return _text(source) or self.queue.removeprefix(DLQ_PREFIX)

    @property
    def dead_lettered_at(self) -> str | None:
        moment = self.headers.get(HEADER_DEAD_LETTERED_AT)
        if not moment and self._deaths and isinstance(self._deaths[0].get("time"), datetime):
            moment = self._deaths[0]["time"].astimezone(UTC).isoformat(timespec="seconds")
        return _text(moment)

    @property
    def _deaths(self) -> list[dict[str, Any]]:
        deaths = self.headers.get("x-death")
        return [d for d in deaths if isinstance(d, dict)] if isinstance(deaths, list) else []

    def as_dict(self) -> dict[str, Any]:
        """Everything about the message as JSON-ready data (the body as text where it is)."""
        try:
            body: Any = json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = self.body.decode("utf-8", errors="replace")
        return {
            "queue": self.queue,
            "position": self.position,
            "message_id": self.message_id,
            "reason": self.reason,
            "detail": self.detail,
            "source_queue": self.source_queue,
            "dead_lettered_at": self.dead_lettered_at,
            "type": self.properties.get("type"),
            "headers": _jsonable(self.headers),
            "body": body,
        }


@dataclass(frozen=True)
class QueueCount:
    queue: str
    messages: int | None  # None: the queue does not exist


@dataclass(frozen=True)
class Moved:
    """What happened to one chosen message: reinjected to ``target`` or left with ``error``."""

    letter: DeadLetter
    target: str | None = None
    error: str | None = None


Selector = Callable[[DeadLetter], bool]


def worker_dead_letter_queues(options: BrokerOptions) -> list[str]:
    """The dead-letter queues of the queues this worker consumes."""
    return [dead_letter_queue(q) for q in (options.events_queue, options.work_queue)]


def resolve_queue(options: BrokerOptions, name: str) -> str:
    """``events``, ``work``, a queue or a dead-letter queue name -> the dead-letter queue."""
    aliases = {"events": options.events_queue, "work": options.work_queue}
    queue = aliases.get(name, name)
    return queue if queue.startswith(DLQ_PREFIX) else dead_letter_queue(queue)


class DeadLetterQueues:
    """A connection for the ``dlq`` commands; use as a context manager.

    with DeadLetterQueues(BrokerOptions.from_settings(settings)) as dlq:
        for letter in dlq.browse("dlq.chimp.work", limit=20): ...
    """

    def __init__(self, options: BrokerOptions) -> None:
        self._options = options
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def __enter__(self) -> DeadLetterQueues:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with suppress(*_CONNECTION_ERRORS):
                connection.close()

    def count(self, queue: str) -> QueueCount:
        """Messages ready in ``queue`` (None when the queue does not exist)."""
        channel = self._open()
        with _translated(f"counting {queue!r}"):
            try:
                declared = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                self._channel = None  # a failed passive declare closes the channel
                return QueueCount(queue, None)
        return QueueCount(queue, declared.method.message_count)

    def browse(self, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
        """Up to ``limit`` messages, oldest first; every one stays in the queue."""
        with self._taken(queue, limit) as held:
            return [letter for letter, _tag in held.letters]

    def reinject(self, queue: str, select: Selector, *, limit: int | None = None) -> list[Moved]:
        """Publish each chosen message back to its source queue (confirmed), then ack it."""
        moved: list[Moved] = []
        with self._taken(queue, limit) as held:
            channel, taken = held.channel, held.letters
            for letter, tag in list(taken):
                if not select(letter):
                    continue
                target = letter.source_queue
                try:
                    with _translated(f"reinjecting to {target!r}"):
                        _publish(
                            channel,
                            letter.body,
                            exchange="",
                            routing_key=target,
                            properties=_reinjection_properties(letter),
                        )
                except UnroutableMessageError as error:
                    moved.append(Moved(letter, error=f"{error}; the message stays in {queue}"))
                    continue
                with _translated("ack"):
                    channel.basic_ack(tag)
                held.settled += 1
                moved.append(Moved(letter, target=target))
        return moved

    def purge(
        self,
        queue: str,
        select: Selector,
        *,
        limit: int | None = None,
        save_to: Path | None = None,
    ) -> list[DeadLetter]:
        """Remove each chosen message, after writing it to ``save_to``/<queue>-<n>.json."""
        removed: list[DeadLetter] = []
        with self._taken(queue, limit) as held:
            channel, taken = held.channel, held.letters
            for letter, tag in list(taken):
                if not select(letter):
                    continue
                if save_to is not None:
                    save_letter(letter, save_to)
                with _translated("ack"):
                    channel.basic_ack(tag)
                held.settled += 1
                removed.append(letter)
        return removed

    # --- internals -------------------------------------------------------------------------

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            params = connection_parameters(self._options, connection_name="chimp-worker dlq tool")
            with _translated(f"connecting to {params.host}:{params.port}"):
                self._connection = pika.BlockingConnection(params)
        with _translated("opening a channel"):
            channel = self._connection.channel()
            channel.confirm_delivery()
        self._channel = channel
        return channel

    @contextmanager
    def _taken(self, queue: str, limit: int | None) -> Iterator[_Held]:
        """Messages held from ``queue``; on leaving, waits (up to ``RETURN_WAIT_S``) until
        the broker shows those not settled as ready again, so a next command sees them."""
        before = self.count(queue).messages
        if before is None:
            raise NotFoundError(
                f"queue {queue!r} does not exist on the broker (a worker declares it on start)"
            )
        self._open()
        assert self._connection is not None
        held = _Held(self._connection, queue, limit)
        with held:
            yield held
        expected = before - held.settled
        deadline = time.monotonic() + RETURN_WAIT_S
        while (self.count(queue).messages or 0) < expected and time.monotonic() < deadline:
            time.sleep(0.05)


class _Held:
    """Messages taken unacknowledged from a queue on a channel of their own (in confirm mode,
    for reinjection); closing it returns every message not acked, in its old place."""

    def __init__(self, connection: pika.BlockingConnection, queue: str, limit: int | None) -> None:
        self.connection = connection
        self.queue = queue
        self.limit = limit
        self.letters: list[tuple[DeadLetter, int]] = []
        self.settled = 0  # acked: gone from the queue
        self.channel: BlockingChannel

    def __enter__(self) -> _Held:
        with _translated(f"reading {self.queue!r}"):
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            while self.limit is None or len(self.letters) < self.limit:
                method, properties, body = self.channel.basic_get(self.queue, auto_ack=False)
                if method is None or properties is None or body is None:
                    break  # the queue is empty (all three are None together)
                assert method.delivery_tag is not None  # a Get-Ok always carries one
                letter = DeadLetter(
                    queue=self.queue,
                    position=len(self.letters) + 1,
                    body=body,
                    headers=dict(properties.headers or {}),
                    properties={
                        "message_id": properties.message_id,
                        "type": properties.type,
                        "content_type": properties.content_type,
                        "priority": properties.priority,
                        "timestamp": properties.timestamp,
                        "app_id": properties.app_id,
                    },
                )
                self.letters.append((letter, method.delivery_tag))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.channel.is_open:
            with suppress(*_CONNECTION_ERRORS):
                self.channel.close()


def save_letter(letter: DeadLetter, folder: Path) -> Path:
    """``folder/<queue>-<position>-<message id>.json``, never overwriting an earlier file."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{letter.queue}-{letter.position:04d}-{letter.message_id or 'no-id'}"
    path = folder / f"{stem}.json"
    counter = 1
    while path.exists():
        counter += 1
        path = folder / f"{stem}-{counter}.json"
    path.write_text(json.dumps(letter.as_dict(), indent=2, sort_keys=True) + "\n")
    return path


def _reinjection_properties(letter: DeadLetter) -> pika.BasicProperties:
    headers = {k: v for k, v in letter.headers.items() if k not in DEATH_HEADERS}
    previous = letter.headers.get(HEADER_REINJECTIONS)
    headers[HEADER_REINJECTED_FROM] = letter.queue
    headers[HEADER_REINJECTED_AT] = datetime.now(UTC).isoformat(timespec="seconds")
    headers[HEADER_REINJECTIONS] = (previous if isinstance(previous, int) else 0) + 1
    return _properties(
        event_type=letter.properties.get("type"),
        headers=headers,
        message_id=letter.message_id,
        priority=letter.properties.get("priority"),
        content_type=letter.properties.get("content_type"),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value
