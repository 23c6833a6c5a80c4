"""The worker daemon: RabbitMQ events in, ISPyB rows out, at least once, never lost.

Threads and who does what (the dramatiq pattern, pika's one thread-safe call):

- The **I/O thread** (the caller of ``run``) owns the pika connection. It turns
  ``process_data_events`` in short ticks -- heartbeats flow even while inference runs for
  minutes -- and between ticks it beats the liveness signal, pings the systemd watchdog, acks,
  requeues and publishes on behalf of the workers, and notices a stop request.
- **Worker threads** (one for events, ``concurrency`` for work items) decode, plan, process and
  decide. They never touch pika: a settlement (ack / requeue) or a publish request goes onto a
  queue and the I/O thread is woken with ``add_callback_threadsafe``. The ack is sent only
  after the results are committed, on the channel the message came in on.
- A lost connection ends the broker session: the loop reconnects with jittered back-off and
  redeclares. Deliveries carry their session id; a settlement for a dead session is dropped
  and logged (the broker redelivers that message; the writer is idempotent).
- SIGTERM only sets a flag. The loop then cancels its consumers, returns messages not yet
  started, waits up to ``grace_period_s`` for those in hand (still heart-beating), requeues
  whatever is left, closes and returns 0. Under ``chimp-worker run`` a last-resort timer ends
  the process ``FORCED_EXIT_MARGIN_S`` after the grace period should anything still block
  (the broker returns the unacked messages when the connection drops).
- Liveness follows the loop *and* the work: each message being worked on has a
  ``WorkWatch``; one that stopped moving makes ``/healthz`` answer 503, stops the liveness
  file and the systemd watchdog pings, so the process is restarted.
- A database that does not answer closes the handler's ``DatabaseGate``: the loop pauses
  its consumers (no other message is taken) while worker threads hold their messages, and
  resumes them once the gate opens (``outage.py``).

What each message leads to (ack, requeue, dead letter, results-ready) is decided by
``handling.MessageHandler`` on the worker thread.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import FrameType

import structlog

from chimp_worker.broker import BrokerOptions, BrokerSession, Delivery, quiet_pika_logging
from chimp_worker.config import Settings
from chimp_worker.errors import (
    BrokerUnavailableError,
    UnroutableMessageError,
)
from chimp_worker.handling import (
    Action,
    HandlingOptions,
    MessageHandler,
    OutgoingMessage,
    WorkAbandonedError,
)
from chimp_worker.health import HealthServer, Liveness, WorkWatch
from chimp_worker.ispyb.database import check_database_access
from chimp_worker.log import get_logger
from chimp_worker.metrics import WorkerMetrics
from chimp_worker.pipeline import Pipeline
from chimp_worker.sdnotify import SystemdNotifier
from chimp_worker.wiring import make_pipeline

log = get_logger(__name__)

LOOP_TICK_S = 0.5  # longest the I/O loop waits before checking flags, liveness, watchdog
FORCED_EXIT_MARGIN_S = 10.0  # after the grace period, before a stuck shutdown is cut short


class StaleDeliveryError(BrokerUnavailableError):
    """The message came in on a connection that has since died; its redelivery will do it."""

    reason = "stale_delivery"


@dataclass(frozen=True)
class _Settlement:
    delivery: Delivery
    action: Action


@dataclass
class _InFlight:
    delivery: Delivery
    kind: str
    received_at: float
    watch: WorkWatch | None = None  # set when a worker thread starts on it


@dataclass
class _PublishRequest:
    message: OutgoingMessage
    done: Future[None]  # the broker's confirm, or the error, for the waiting worker thread


class _WorkerPool:
    """Daemon threads taking deliveries from a queue; deliveries not started can be taken back.

    Daemon threads, because a worker stuck in inference past the grace period must not keep
    the process alive: its message has been requeued and its writes are idempotent.
    """

    def __init__(self, name: str, size: int, run: Callable[[Delivery], None]) -> None:
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._loop, args=(run,), name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, delivery: Delivery) -> None:
        self._queue.put(delivery)

    def take_back(self) -> list[Delivery]:
        taken: list[Delivery] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if item is not None:
                taken.append(item)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _loop(self, run: Callable[[Delivery], None]) -> None:
        while (delivery := self._queue.get()) is not None:
            run(delivery)


class Daemon:
    """Consumes the events and work queues until stopped; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        metrics: WorkerMetrics | None = None,
        liveness: Liveness | None = None,
        notifier: SystemdNotifier | None = None,
        max_messages: int | None = None,
        idle_exit_s: float | None = None,
        connection_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.broker_options = BrokerOptions.from_settings(settings)
        self.pipeline = pipeline
        self.metrics = metrics or WorkerMetrics.create()
        self.liveness = liveness or Liveness(
            timeout_s=settings.liveness_timeout_s, path=settings.liveness_file
        )
        self.notifier = notifier or SystemdNotifier()
        self.max_messages = max_messages
        self.idle_exit_s = idle_exit_s
        self.connection_name = connection_name or (
            f"chimp-worker {socket.gethostname()} pid {os.getpid()}"
        )
        self._rng = random.Random()
        self._session_ids = itertools.count(1)
        self._session: BrokerSession | None = None
        self._stop_requested = False  # set from signal handlers: a plain attribute, nothing else
        self._stopping = threading.Event()  # set by the I/O thread; workers stop retrying
        self._abandon = threading.Event()  # grace expired; workers stop at an image boundary
        self._settlements: queue.Queue[_Settlement] = queue.Queue()
        self._publish_requests: queue.Queue[_PublishRequest] = queue.Queue()
        self._in_flight: dict[tuple[int, int], _InFlight] = {}
        self._received = 0
        self._last_activity = time.monotonic()
        self._ready_sent = False
        self._failed_connects = 0
        self._consuming = False  # consumers are started (not paused for a database outage)
        self._draining = False  # shutting down: consumers stay cancelled
        self._stalled_reported: str | None = None
        self._last_broker_error: str | None = None
        self._pools: dict[str, _WorkerPool] = {}
        self.handler = MessageHandler(
            HandlingOptions.from_settings(settings),
            pipeline,
            self.metrics,
            self._publish_body,
            stopping=self._stopping,
            abandon=self._abandon,
            rng=self._rng,
        )

    # --- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the daemon to stop gracefully; safe from signal handlers and other threads."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._stop_requested = True  # never touch pika or locks here

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Consume until stopped (signal, ``max_messages``, ``idle_exit_s``); returns 0.

        Raises ``BrokerAccessError`` (exit 2) when the broker refuses the login or vhost, and
        ``BrokerUnavailableError`` (exit 1) when ``idle_exit_s`` ran out without the broker
        ever being reached: an idle batch job that never connected did not succeed.
        """
        self._pools = {
            "events": _WorkerPool("chimp-events", 1, self._run_job),
            "work": _WorkerPool("chimp-work", self.settings.concurrency, self._run_job),
        }
        analyser = self.pipeline.analyser
        self.metrics.describe_analyser(analyser.name, analyser.schema_name, analyser.models)
        health = (
            HealthServer(
                self.liveness,
                self.metrics.registry,
                port=self.settings.metrics_port,
                host=self.settings.metrics_address,
            )
            if self.settings.metrics_port
            else None
        )
        if health is not None:
            health.start()
        log.info(
            "worker_starting",
            analyser=self.pipeline.analyser.name,
            concurrency=self.settings.concurrency,
            events_queue=self.settings.events_queue,
            work_queue=self.settings.work_queue,
        )
        try:
            while not self._should_stop():
                try:
                    self._run_session()
                except BrokerUnavailableError as error:
                    delay = self._delay(self._failed_connects)
                    self._failed_connects += 1
                    self._lose_session(error, retry_in_s=delay)
                    self._sleep(delay)
            self._shutdown()
        finally:
            for pool in self._pools.values():
                pool.stop()
            if health is not None:
                health.stop()
            self.liveness.clear()
        log.info("worker_stopped", messages=self._received)
        if not self._ready_sent and not self._stop_requested:
            raise BrokerUnavailableError(
                f"never reached RabbitMQ within --idle-exit {self.idle_exit_s:g} s "
                f"({self._last_broker_error or 'no connection'}); check CHIMP_AMQP_URL and "
                "that the broker is running"
            )
        return 0

    # --- I/O thread --------------------------------------------------------------------------

    def _run_session(self) -> None:
        session = BrokerSession(
            self.broker_options,
            connection_name=self.connection_name,
            session_id=next(self._session_ids),
        )
        self._session = session
        session.open()
        self._consuming = False
        if not self.handler.gate.is_down:
            self._start_consumers(session)
        self._failed_connects = 0  # back-off starts small again after a good session
        log.info("broker_session_open", session_id=session.session_id)
        if not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(f"consuming {self.settings.work_queue}")
        while not self._should_stop():
            self._tick(session)

    def _start_consumers(self, session: BrokerSession) -> None:
        work_prefetch = self.settings.prefetch * self.settings.concurrency
        session.consume(self.settings.events_queue, self.settings.prefetch, self._on_delivery)
        session.consume(self.settings.work_queue, work_prefetch, self._on_delivery)
        self._consuming = True

    def _tick(self, session: BrokerSession | None) -> None:
        """One turn of the I/O loop: network, settlements, publishes, consumers paused or
        resumed for a database outage, liveness, watchdog.

        Without a session (backing off, or lost during shutdown) publish requests fail at once
        and settlements are dropped as stale: the broker redelivers those messages.
        """
        if session is not None:
            session.process_events(LOOP_TICK_S)
            self._drain(session)
            if not self._draining:
                self._follow_database_gate(session)
        else:
            time.sleep(LOOP_TICK_S / 5)
            self._fail_publish_requests(BrokerUnavailableError("not connected to the broker"))
            while not self._settlements.empty():
                self._settle_now(None, self._settlements.get_nowait())
        self.liveness.set_stalled(self._stalled_work())
        self.liveness.beat()
        if self.liveness.is_alive():
            self.notifier.watchdog()
        self.metrics.io_loop_beat.set_to_current_time()

    def _follow_database_gate(self, session: BrokerSession) -> None:
        """Pause consuming while the database is down (messages in hand are held); resume."""
        down = self.handler.gate.is_down
        self.metrics.database_down.set(1 if down else 0)
        if down and self._consuming:
            session.cancel_consumers()
            self._consuming = False
            log.warning("consumers_paused", reason="database_down", in_hand=len(self._in_flight))
        elif not down and not self._consuming:
            self._start_consumers(session)
            log.info("consumers_resumed")

    def _stalled_work(self) -> str | None:
        """A description of the messages whose work stopped moving, or None."""
        stalled = [
            entry
            for entry in self._in_flight.values()
            if entry.watch is not None and entry.watch.overdue()
        ]
        self.metrics.work_stalled.set(len(stalled))
        if not stalled:
            self._stalled_reported = None
            return None
        entry = stalled[0]
        assert entry.watch is not None
        problem = (
            f"{len(stalled)} message(s) stopped moving: {entry.kind} message "
            f"{entry.delivery.message_id or entry.delivery.delivery_tag} silent for "
            f"{entry.watch.silent_s():.0f} s while {entry.watch.doing}"
        )
        if self._stalled_reported is None:
            log.error("work_stalled", detail=problem, work_stall_timeout_s=entry.watch.stall_s)
        self._stalled_reported = problem
        return problem

    def _should_stop(self) -> bool:
        if self._stop_requested:
            return True
        if self.max_messages is not None and self._received >= self.max_messages:
            return True
        idle = time.monotonic() - self._last_activity
        return bool(
            self.idle_exit_s is not None and not self._in_flight and idle > self.idle_exit_s
        )

    def _on_delivery(self, delivery: Delivery) -> None:
        kind = "events" if delivery.queue == self.settings.events_queue else "work"
        self._received += 1
        self._last_activity = time.monotonic()
        self._in_flight[(delivery.session_id, delivery.delivery_tag)] = _InFlight(
            delivery, kind, time.monotonic()
        )
        self.metrics.in_flight.set(len(self._in_flight))
        self._pools[kind].submit(delivery)

    def _drain(self, session: BrokerSession) -> None:
        """Apply workers' settlements and publish requests (I/O thread only)."""
        while True:
            try:
                request = self._publish_requests.get_nowait()
            except queue.Empty:
                break
            self._publish_now(session, request)
        while True:
            try:
                settlement = self._settlements.get_nowait()
            except queue.Empty:
                break
            self._settle_now(session, settlement)

    def _publish_now(self, session: BrokerSession, request: _PublishRequest) -> None:
        message = request.message
        if message.session_id is not None and message.session_id != session.session_id:
            request.done.set_exception(StaleDeliveryError("connection changed; not publishing"))
            return
        try:
            session.publish(
                message.body,
                exchange=message.exchange,
                routing_key=message.routing_key,
                event_type=message.event_type,
                headers=message.headers,
                message_id=message.message_id,
                priority=message.priority,
                content_type=message.content_type,
            )
        except UnroutableMessageError as error:
            request.done.set_exception(error)
        except BrokerUnavailableError as error:
            request.done.set_exception(error)
            raise
        else:
            self.metrics.published.labels(message.event_type or "raw").inc()
            request.done.set_result(None)

    def _settle_now(self, session: BrokerSession | None, settlement: _Settlement) -> None:
        delivery = settlement.delivery
        entry = self._in_flight.pop((delivery.session_id, delivery.delivery_tag), None)
        self.metrics.in_flight.set(len(self._in_flight))
        self._last_activity = time.monotonic()
        if entry is None:  # already requeued when the grace period ran out
            log.warning("late_settlement_dropped", delivery_tag=delivery.delivery_tag)
            return
        self.metrics.message_seconds.labels(entry.kind).observe(
            time.monotonic() - entry.received_at
        )
        if session is None or session.session_id != delivery.session_id or not session.is_open:
            log.warning(
                "stale_ack_dropped",
                delivery_tag=delivery.delivery_tag,
                action=str(settlement.action),
                message_id=delivery.message_id,
                reason="the connection it came on is gone; the broker redelivers it",
            )
            self.metrics.messages.labels(entry.kind, "stale").inc()
            return
        if settlement.action is Action.REQUEUED:
            session.requeue(delivery.delivery_tag)
        else:
            session.ack(delivery.delivery_tag)
        self.metrics.messages.labels(entry.kind, str(settlement.action)).inc()

    def _lose_session(self, error: BrokerUnavailableError, retry_in_s: float | None = None) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
        self.metrics.reconnects.inc()
        self._last_broker_error = str(error)
        stale = sum(1 for key in self._in_flight if session and key[0] == session.session_id)
        log.warning(
            "broker_unavailable",
            error=str(error),
            messages_in_hand=stale,
            retry_in_s=None if retry_in_s is None else round(retry_in_s, 2),
        )
        self._fail_publish_requests(error)

    def _fail_publish_requests(self, error: BrokerUnavailableError) -> None:
        while True:
            try:
                request = self._publish_requests.get_nowait()
            except queue.Empty:
                return
            request.done.set_exception(error)

    def _sleep(self, seconds: float) -> None:
        """Back-off that keeps the loop turning (liveness, watchdog) and heeds a stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._should_stop():
            self._tick(None)

    def _shutdown(self) -> None:
        """Stop consuming and let the messages in hand finish.

        A stop from a limit (``max_messages``, ``idle_exit_s``) waits for every message in
        hand. A stop from a signal returns messages not yet started at once and gives those
        being worked on ``grace_period_s``; then they are requeued and abandoned.
        """
        self.notifier.stopping("finishing messages in hand")
        log.info("worker_stopping", messages_in_hand=len(self._in_flight))
        self._draining = True
        self._on_session(lambda session: session.cancel_consumers())
        self._consuming = False
        deadline: float | None = None
        while self._in_flight:
            if self._stop_requested and deadline is None:
                deadline = time.monotonic() + self.settings.grace_period_s
                self._stopping.set()
                self._return_unstarted()
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._session is None:
                self._tick(None)
            else:
                self._on_session(self._tick)
        if self._in_flight:
            self._abandon.set()
            for entry in list(self._in_flight.values()):
                log.warning("grace_expired_requeueing", delivery_tag=entry.delivery.delivery_tag)
                self._settle_safely(_Settlement(entry.delivery, Action.REQUEUED))
        if self._session is not None:
            self._session.close()
            self._session = None

    def _on_session(self, action: Callable[[BrokerSession], None]) -> bool:
        """Run ``action`` on the live session; False when there is none or it just died."""
        session = self._session
        if session is None:
            return False
        try:
            action(session)
        except BrokerUnavailableError as error:
            self._lose_session(error)
            return False
        return True

    def _return_unstarted(self) -> None:
        """Messages handed to a pool but not started go back to the queue at once."""
        for pool in self._pools.values():
            for delivery in pool.take_back():
                self._settle_safely(_Settlement(delivery, Action.REQUEUED))

    def _settle_safely(self, settlement: _Settlement) -> None:
        """Settle on the live session; without one (or if it dies now) the broker requeues."""
        if self._on_session(lambda session: self._settle_now(session, settlement)):
            return
        delivery = settlement.delivery
        if (delivery.session_id, delivery.delivery_tag) in self._in_flight:
            self._settle_now(None, settlement)

    # --- worker threads ----------------------------------------------------------------------

    def _run_job(self, delivery: Delivery) -> None:
        """Handle one delivery on a worker thread; always hand a settlement back."""
        action = Action.REQUEUED
        started = time.perf_counter()
        watch = WorkWatch(self.settings.work_stall_timeout_s)
        entry = self._in_flight.get((delivery.session_id, delivery.delivery_tag))
        if entry is not None:  # a dict read from this thread: the I/O thread only adds/pops
            entry.watch = watch
        context = {
            "queue": delivery.queue,
            "message_id": delivery.message_id or f"tag-{delivery.delivery_tag}",
            "redelivered": delivery.redelivered,
            "delivery_count": delivery.headers.get("x-delivery-count", 0),
        }
        with structlog.contextvars.bound_contextvars(**context):
            try:
                action = self.handler.handle(delivery, heartbeat=watch)
            except WorkAbandonedError:
                log.warning("message_abandoned_at_shutdown")
            except Exception:  # a bug or a library crash: requeue, the delivery limit decides
                log.exception("message_failed_unexpectedly")
            finally:
                self._settlements.put(_Settlement(delivery, action))
                self._wake()
                log.info(
                    "message_done",
                    outcome=str(action),
                    seconds=round(time.perf_counter() - started, 3),
                )

    def _publish_body(self, message: OutgoingMessage) -> None:
        """Hand a publish to the I/O thread and wait for the broker's confirm (any thread)."""
        done: Future[None] = Future()
        self._publish_requests.put(_PublishRequest(message, done))
        self._wake()
        try:
            done.result(timeout=self.settings.publish_timeout_s)
        except FutureTimeoutError:
            raise BrokerUnavailableError(
                f"no publisher confirm within {self.settings.publish_timeout_s}s"
            ) from None

    def _wake(self) -> None:
        session = self._session
        if session is not None:
            session.call_threadsafe(lambda: None)  # process_data_events returns; loop drains

    def _delay(self, attempt: int) -> float:
        return self.handler.delay(attempt)


def run_daemon(
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """``chimp-worker run``: build the pipeline, consume until a signal or a limit; exit 0."""
    quiet_pika_logging()
    pipeline = make_pipeline(settings)
    try:
        unreachable = pipeline.engine and check_database_access(
            pipeline.engine, pipeline.analyser.schema_name, analyser=pipeline.analyser.name
        )
        if unreachable:
            log.warning("database_unreachable_at_start", detail=unreachable)
        daemon = Daemon(settings, pipeline, max_messages=max_messages, idle_exit_s=idle_exit_s)
        daemon.install_signal_handlers()
        _exit_at_the_latest_after_grace(daemon, settings.grace_period_s + FORCED_EXIT_MARGIN_S)
        return daemon.run()
    finally:
        pipeline.close()


def _exit_at_the_latest_after_grace(daemon: Daemon, limit_s: float) -> None:
    """Once a stop is requested, end the process after ``limit_s`` whatever still blocks.

    The orderly shutdown finishes well before (it requeues what is left when the grace period
    ends); this catches what it cannot: a thread stuck in a call that never returns holding
    something the exit waits on. ``os._exit`` skips that wait; the broker returns the
    messages still unacked when the connection drops. Exit status 1: something hung.
    """

    def watch() -> None:
        while not daemon.stop_requested:
            time.sleep(0.2)
        time.sleep(limit_s)
        log.error("shutdown_forced", detail=f"still running {limit_s:g} s after the stop request")
        os._exit(1)

    threading.Thread(target=watch, name="chimp-exit-timer", daemon=True).start()
