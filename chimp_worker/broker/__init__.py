"""RabbitMQ through pika -- the only package that imports pika.

Three things live here: the connection parameters (heartbeat, blocked-connection timeout,
TLS), the queue topology every process declares identically, and two thin adapters:
``Publisher`` (confirms + ``mandatory``, for commands such as mock-imager and replay) and
``BrokerSession`` (one connection with a consumer channel and a confirm-mode publishing
channel, driven by the daemon's I/O thread). pika's exceptions are translated here into
``BrokerUnavailableError`` (transient), ``UnroutableMessageError`` and
``TopologyMismatchError`` so nothing above this module knows pika.

Topology (see docs/operations.md): the events queue and the work queue are durable
quorum queues; each has a quorum dead-letter queue ``dlq.<queue>``. With
``queue_arguments="declare"`` (default) the delivery limit and dead-lettering are queue
arguments, declared identically by every process; with ``"policy"`` only ``x-queue-type`` is
declared and a broker policy supplies the rest (the facility convention).
"""

from __future__ import annotations

import logging
import re
import ssl
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils import connection_workflow

from chimp_worker import __version__
from chimp_worker.errors import (
    BrokerAccessError,
    BrokerUnavailableError,
    ChimpError,
    ConfigError,
    TopologyMismatchError,
    UnroutableMessageError,
)
from chimp_worker.events import CONTENT_TYPE, Event, InspectionCompleted, ResultsReady, WorkItem
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from chimp_worker.config import Settings

log = get_logger(__name__)

DLQ_PREFIX = "dlq."
HEADER_REASON = "x-chimp-reason"  # why a message was dead-lettered by the worker
HEADER_DETAIL = "x-chimp-detail"  # the human message, truncated
HEADER_SOURCE_QUEUE = "x-chimp-source-queue"
HEADER_DEAD_LETTERED_AT = "x-chimp-dead-lettered-at"
MAX_DETAIL_CHARS = 1000
PERSISTENT: Final = pika.DeliveryMode.Persistent  # survives a broker restart

# Connection-level failures: the session is gone, reconnect.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.StreamLostError,
    # raised as is by BlockingConnection when the TCP connect works but the AMQP handshake
    # does not finish (a frozen or blackholed broker): not an AMQPConnectionError
    connection_workflow.AMQPConnectorException,
    ConnectionError,
    OSError,
)


def broker_error(error: BaseException, *, where: str = "") -> ChimpError:
    """A pika error as the worker's own: a refused login, vhost or permission is a
    ``BrokerAccessError`` (no retry can fix it: exit 2), anything else is transient."""
    if isinstance(error, ChimpError):
        return error
    text = str(error)
    at = f" ({where})" if where else ""
    if "ACCESS_REFUSED" in text and isinstance(error, pika.exceptions.ProbableAuthenticationError):
        return BrokerAccessError(
            f"amqp_url: RabbitMQ{at} refused the login (ACCESS_REFUSED); check the username "
            "and password in CHIMP_AMQP_URL or the amqp_credentials file"
        )
    if "NOT_ALLOWED" in text and isinstance(error, pika.exceptions.ProbableAccessDeniedError):
        return BrokerAccessError(
            f"amqp_url: RabbitMQ{at} refused the virtual host (NOT_ALLOWED: {_reply(text)}); "
            "check the vhost at the end of CHIMP_AMQP_URL (/ is written %2F) or in the "
            "amqp_credentials file, and that the user may use it"
        )
    if isinstance(error, pika.exceptions.ChannelClosedByBroker) and error.reply_code == 403:
        return BrokerAccessError(
            f"RabbitMQ{at} refused an operation ({error.reply_text}); give the user configure, "
            "write and read permissions on the chimp.* and dlq.chimp.* queues and the results "
            "exchange (docs/deployment.md)"
        )
    return BrokerUnavailableError(f"{where or 'RabbitMQ'}: {error!r}")


def _reply(text: str) -> str:
    """The broker's reply text inside pika's message, e.g. "vhost x not found"."""
    match = re.search(r"[A-Z_]+ - ([^'\"]+)", text)
    return match[1].strip() if match else text


@dataclass(frozen=True, kw_only=True)
class BrokerOptions:
    """What a connection to RabbitMQ and the topology need from the settings (the broker's
    slice of ``Settings``, built once with ``from_settings``). The URL may hold a password:
    it is kept out of ``repr``."""

    amqp_url: str = field(repr=False)
    heartbeat_s: int
    blocked_timeout_s: float
    tls_ca_file: Path | None
    tls_cert_file: Path | None
    tls_key_file: Path | None
    events_queue: str
    work_queue: str
    results_exchange: str
    results_routing_key: str
    results_queue: str  # bound to results_exchange; empty: none is declared
    queue_arguments: Literal["declare", "policy"]
    delivery_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerOptions:
        return cls(
            amqp_url=settings.amqp_url,
            heartbeat_s=settings.amqp_heartbeat_s,
            blocked_timeout_s=settings.amqp_blocked_timeout_s,
            tls_ca_file=settings.amqp_tls_ca_file,
            tls_cert_file=settings.amqp_tls_cert_file,
            tls_key_file=settings.amqp_tls_key_file,
            events_queue=settings.events_queue,
            work_queue=settings.work_queue,
            results_exchange=settings.results_exchange,
            results_routing_key=settings.results_routing_key,
            results_queue=settings.results_queue,
            queue_arguments=settings.queue_arguments,
            delivery_limit=settings.delivery_limit,
        )


def quiet_pika_logging() -> None:
    """pika logs every failed connect or lost connection at ERROR, with a traceback, from
    several modules; the worker logs one line per failure itself (with pika's error), so in
    a daemon pika is held to CRITICAL."""
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def dead_letter_queue(queue: str) -> str:
    """The facility's naming convention: ``dlq.<queue>``."""
    return f"{DLQ_PREFIX}{queue}"


def queue_arguments(options: BrokerOptions, queue: str) -> dict[str, Any]:
    """Arguments of a work or events queue; identical in every process or the declare fails.

    At-least-once dead-lettering (3.10+) makes the broker confirm the move to the DLQ
    instead of dropping the message if the DLQ is briefly unavailable; it requires
    ``reject-publish`` overflow, which is inert without a length limit.
    """
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if options.queue_arguments == "declare":
        arguments |= {
            "x-delivery-limit": options.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


def connection_parameters(options: BrokerOptions, *, connection_name: str) -> pika.URLParameters:
    """Parameters from the options: a heartbeat so dead peers are noticed, a blocked-connection
    timeout so a broker memory/disk alarm cannot hang the worker for ever, TLS for amqps."""
    params = pika.URLParameters(options.amqp_url)
    params.heartbeat = options.heartbeat_s
    params.blocked_connection_timeout = options.blocked_timeout_s
    params.connection_attempts = 1  # retries are the caller's, with jittered back-off
    params.socket_timeout = 10.0
    params.client_properties = {
        "connection_name": connection_name,
        "product": "chimp-worker",
        "version": __version__,
    }
    if options.amqp_url.startswith("amqps:"):
        params.ssl_options = pika.SSLOptions(tls_context(options), server_hostname=params.host)
    return params


def tls_context(options: BrokerOptions) -> ssl.SSLContext:
    """A verifying client context: the system CAs or ``amqp_tls_ca_file``, optional client cert."""
    try:
        context = ssl.create_default_context(
            cafile=str(options.tls_ca_file) if options.tls_ca_file else None
        )
        if options.tls_cert_file:
            context.load_cert_chain(
                str(options.tls_cert_file),
                str(options.tls_key_file) if options.tls_key_file else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"amqp_tls_*: cannot load TLS files: {exc}") from None
    return context


def declare_topology(channel: BlockingChannel, options: BrokerOptions) -> None:
    """Declare both queues with their DLQs, and the results exchange (idempotent).

    A queue that already exists with other arguments makes the broker close the channel with
    406 PRECONDITION_FAILED: that becomes ``TopologyMismatchError`` naming the queue.
    """
    for queue in (options.events_queue, options.work_queue):
        _declare_queue(channel, dead_letter_queue(queue), {"x-queue-type": "quorum"})
        _declare_queue(channel, queue, queue_arguments(options, queue))
    channel.exchange_declare(options.results_exchange, exchange_type="topic", durable=True)
    if options.results_queue:
        _declare_queue(channel, options.results_queue, {"x-queue-type": "quorum"})
        channel.queue_bind(
            options.results_queue,
            options.results_exchange,
            routing_key=options.results_routing_key,
        )


def _declare_queue(channel: BlockingChannel, queue: str, arguments: dict[str, Any]) -> None:
    try:
        channel.queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise TopologyMismatchError(
                f"queue {queue!r} exists with other arguments than {arguments} "
                f"({exc.reply_text}); set queue_arguments to match how it was created, or "
                "delete the empty queue so it is re-created"
            ) from exc
        if exc.reply_code == 403:
            raise broker_error(exc, where=f"declaring queue {queue!r}") from exc
        raise BrokerUnavailableError(f"declaring queue {queue!r}: {exc}") from exc


def default_route(event: Event, options: BrokerOptions) -> tuple[str, str]:
    """(exchange, routing key) each event type goes to unless told otherwise."""
    if isinstance(event, InspectionCompleted):
        return "", options.events_queue
    if isinstance(event, WorkItem):
        return "", options.work_queue
    if isinstance(event, ResultsReady):
        return options.results_exchange, options.results_routing_key
    raise TypeError(f"not an event: {event!r}")


@dataclass(frozen=True)
class Delivery:
    """One message handed to the daemon; ``session_id`` says which connection it came on."""

    queue: str
    delivery_tag: int
    body: bytes
    session_id: int
    redelivered: bool = False
    message_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)  # to copy onto a DLQ message


def _properties(
    *,
    event_type: str | None,
    headers: Mapping[str, Any] | None,
    message_id: str | None = None,
    priority: int | None = None,
    content_type: str | None = CONTENT_TYPE,
) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=content_type,
        delivery_mode=PERSISTENT,
        message_id=message_id or uuid.uuid4().hex,
        timestamp=int(datetime.now(UTC).timestamp()),
        type=event_type,
        app_id="chimp-worker",
        priority=priority,
        headers=dict(headers) if headers else None,
    )


def _publish(
    channel: BlockingChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: pika.BasicProperties,
) -> None:
    """Publish on a confirm-mode channel; returns once the broker has taken responsibility."""
    try:
        channel.basic_publish(exchange, routing_key, body, properties=properties, mandatory=True)
    except pika.exceptions.UnroutableError as exc:
        raise UnroutableMessageError(
            f"no queue is bound for exchange {exchange!r} routing key {routing_key!r}"
        ) from exc
    except pika.exceptions.NackError as exc:
        raise BrokerUnavailableError(
            f"broker refused (nacked) a publish to {routing_key!r}"
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise BrokerUnavailableError(f"publish to {routing_key!r} failed: {exc!r}") from exc


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (BrokerUnavailableError, UnroutableMessageError, ConfigError):
        raise
    except _CONNECTION_ERRORS as exc:
        raise broker_error(exc, where=action) from exc


class Publisher:
    """Publishes events with confirms and ``mandatory`` from a command (mock-imager, replay).

    Connects lazily and declares the topology, so events published before any worker has
    started are kept. A publish that fails on a dead connection is retried once on a fresh
    one; a duplicate is possible then, which the idempotent consumers absorb.

        with Publisher(BrokerOptions.from_settings(settings)) as publisher:
            publisher.publish(InspectionCompleted(containerInspectionId=42))
    """

    def __init__(
        self, options: BrokerOptions, *, declare: bool = True, connection_name: str | None = None
    ) -> None:
        self._options = options
        self._declare = declare
        self._name = connection_name or f"chimp-worker publisher {uuid.uuid4().hex[:8]}"
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def publish(
        self,
        event: Event,
        *,
        queue: str | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> str:
        """Publish one event and wait for the broker's confirm; returns its message id.

        ``queue`` sends straight to that queue; otherwise ``exchange``/``routing_key``, or the
        event type's default route (events queue, work queue, results exchange).
        """
        if queue is not None:
            exchange, routing_key = "", queue
        elif routing_key is None:
            exchange, routing_key = default_route(event, self._options)
        body = event.encode()
        message_id = uuid.uuid4().hex
        if priority is None and isinstance(event, InspectionCompleted | WorkItem):
            priority = event.priority
        properties = _properties(
            event_type=event.event_type, headers=headers, message_id=message_id, priority=priority
        )
        for attempt in (1, 2):
            try:
                channel = self._open()
                _publish(
                    channel,
                    body,
                    exchange=exchange or "",
                    routing_key=routing_key,
                    properties=properties,
                )
                return message_id
            except BrokerUnavailableError:
                self.close()
                if attempt == 2:
                    raise
                log.warning("publish_retry_on_new_connection", routing_key=routing_key)
        raise AssertionError("unreachable")

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with suppress(*_CONNECTION_ERRORS):
                connection.close()

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        params = connection_parameters(self._options, connection_name=self._name)
        with _translated(f"connecting to {params.host}:{params.port}"):
            self._connection = pika.BlockingConnection(params)
            channel = self._connection.channel()
            if self._declare:
                declare_topology(channel, self._options)
            channel.confirm_delivery()
        self._channel = channel
        return channel


class BrokerSession:
    """One connection for the daemon: a consumer channel and a confirm-mode publish channel.

    Every method must be called from the I/O thread that opened it, except
    ``call_threadsafe``. Failures surface as ``BrokerUnavailableError``; the daemon then
    drops the session (its delivery tags die with it) and opens a new one.
    """

    def __init__(self, options: BrokerOptions, *, connection_name: str, session_id: int) -> None:
        self.options = options
        self.session_id = session_id
        self._name = connection_name
        self._connection: pika.BlockingConnection | None = None
        self._consume_channel: BlockingChannel | None = None
        self._publish_channel: BlockingChannel | None = None
        self._consumer_tags: list[str] = []

    def open(self) -> None:
        """Connect, declare the topology, open both channels."""
        params = connection_parameters(self.options, connection_name=self._name)
        with _translated(f"connecting to {params.host}:{params.port}"):
            self._connection = pika.BlockingConnection(params)
            self._consume_channel = self._connection.channel()
            declare_topology(self._consume_channel, self.options)
            self._publish_channel = self._connection.channel()
            self._publish_channel.confirm_delivery()

    @property
    def is_open(self) -> bool:
        return bool(
            self._connection is not None
            and self._connection.is_open
            and self._consume_channel is not None
            and self._consume_channel.is_open
        )

    def consume(self, queue: str, prefetch: int, on_delivery: Callable[[Delivery], None]) -> None:
        """Start a consumer with its own prefetch (per-consumer QoS; quorum queues have no
        global QoS)."""
        channel = self._require_channel()

        def on_message(
            _channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            properties: pika.BasicProperties,
            body: bytes,
        ) -> None:
            assert method.delivery_tag is not None  # a Basic.Deliver always carries its tag
            on_delivery(
                Delivery(
                    queue=queue,
                    delivery_tag=method.delivery_tag,
                    body=body,
                    session_id=self.session_id,
                    redelivered=bool(method.redelivered),
                    message_id=properties.message_id,
                    headers=dict(properties.headers or {}),
                    properties={
                        "content_type": properties.content_type,
                        "message_id": properties.message_id,
                        "type": properties.type,
                        "priority": properties.priority,
                    },
                )
            )

        with _translated(f"consuming from {queue!r}"):
            channel.basic_qos(prefetch_count=prefetch)
            self._consumer_tags.append(channel.basic_consume(queue, on_message))

    def cancel_consumers(self) -> None:
        """Stop new deliveries; messages not yet dispatched are returned to the queue by pika."""
        channel = self._require_channel()
        with _translated("cancelling consumers"):
            for tag in self._consumer_tags:
                channel.basic_cancel(tag)
        self._consumer_tags.clear()

    def ack(self, delivery_tag: int) -> None:
        with _translated("ack"):
            self._require_channel().basic_ack(delivery_tag)

    def requeue(self, delivery_tag: int) -> None:
        """Return the message to its queue (counts towards the delivery limit on quorum queues)."""
        with _translated("requeue"):
            self._require_channel().basic_nack(delivery_tag, requeue=True)

    def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        event_type: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
        content_type: str | None = CONTENT_TYPE,
    ) -> None:
        """Publish with confirm + mandatory on the publish channel (I/O thread only)."""
        if self._publish_channel is None or not self._publish_channel.is_open:
            raise BrokerUnavailableError("publish channel is closed")
        _publish(
            self._publish_channel,
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=_properties(
                event_type=event_type,
                headers=headers,
                message_id=message_id,
                priority=priority,
                content_type=content_type,
            ),
        )

    def process_events(self, time_limit: float) -> None:
        """Run the I/O loop: heartbeats, deliveries, thread-safe callbacks."""
        if self._connection is None:
            raise BrokerUnavailableError("not connected")
        with _translated("processing broker events"):
            self._connection.process_data_events(time_limit=time_limit)

    def call_threadsafe(self, callback: Callable[[], None]) -> bool:
        """Ask the I/O thread to run ``callback``; False when the connection is gone."""
        connection = self._connection
        if connection is None:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except _CONNECTION_ERRORS:
            return False
        return True

    def close(self) -> None:
        """Close politely if possible; never raises (the session may already be dead)."""
        connection, self._connection = self._connection, None
        self._consume_channel = self._publish_channel = None
        self._consumer_tags.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:  # closing a dying connection: nothing more to do
                log.debug("broker_close_failed", error=repr(exc))

    def _require_channel(self) -> BlockingChannel:
        if self._consume_channel is None or not self._consume_channel.is_open:
            raise BrokerUnavailableError("consumer channel is closed")
        return self._consume_channel


def dead_letter_headers(
    delivery: Delivery, reason: str, detail: str, *, at: datetime | None = None
) -> dict[str, Any]:
    """The original headers plus why and where from, for a message the worker dead-letters."""
    moment = at or datetime.now(UTC)
    return {
        **delivery.headers,
        HEADER_REASON: reason,
        HEADER_DETAIL: detail[:MAX_DETAIL_CHARS],
        HEADER_SOURCE_QUEUE: delivery.queue,
        HEADER_DEAD_LETTERED_AT: moment.isoformat(timespec="seconds"),
    }
