"""What happens to one message, decided on a worker thread from the error branch alone.

- malformed event, unknown images, unknown inspection after bounded retries, any other
  ``PermanentError``: copied to ``dlq.<queue>`` with ``x-chimp-reason`` / ``x-chimp-detail``
  headers (confirmed), then acked;
- ``TransientError`` (database): the unit is retried with jittered back-off; if the database
  then does not answer at all, the message is *held* through the outage (consumers paused,
  ``outage.py``) up to ``database_outage_hold_s`` and retried when it is back; otherwise
  (or past the bound) it is requeued, and the queue's delivery limit stops a message that
  never succeeds -- an outage spends at most one delivery;
- a database error no retry is known to fix (``DatabaseError``): requeued, one log line with
  the server's error, never the SQL;
- an inspection event is planned into work items of ``images_per_work_item`` images that
  still need work, published with confirms, then acked (with none left to plan, it asks
  ``Pipeline.complete_inspection``); a work item goes through ``Pipeline.process`` and is
  acked after the commit;
- results-ready (confirms + ``mandatory``) is published by the worker that completes an
  inspection, or by the one handling a redelivered message that finds the inspection done but
  never announced (its completer died between the commit and the publish). It is recorded in
  ``chimp_inspection.resultsPublishedAt`` only after the broker confirms, and the message is
  acked only after that: results-ready goes out at least once, a duplicate in a race is
  possible, a lost one is not.

The handler never touches pika: it publishes through the ``publish`` function it is given
(the daemon hands that to its I/O thread) and returns an ``Action`` for the I/O thread. Nor
does it touch the database: the pipeline plans, processes, completes, answers whether
results-ready is owed, records it, and probes the database for outage holds.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
import tenacity

from chimp_worker.broker import Delivery, dead_letter_headers, dead_letter_queue
from chimp_worker.errors import (
    BrokerUnavailableError,
    ChimpError,
    DatabaseError,
    DatabaseUnavailableError,
    EventError,
    InspectionNotVisibleError,
    PermanentError,
    TransientError,
    UnknownInspectionError,
    UnroutableMessageError,
)
from chimp_worker.events import (
    CONTENT_TYPE,
    Event,
    InspectionCompleted,
    WorkItem,
    decode_event,
    plan_work_items,
)
from chimp_worker.log import get_logger
from chimp_worker.metrics import WorkerMetrics
from chimp_worker.outage import DatabaseGate
from chimp_worker.pipeline import NO_HEARTBEAT, Heartbeat, ImageProgress, Pipeline, WorkOutcome

if TYPE_CHECKING:
    from chimp_worker.config import Settings

log = get_logger(__name__)

RESULTS_READY_ATTEMPTS = 10
# A completion this old and still unannounced has lost its announcer: a fresh message may
# announce it too. Younger ones are left to their completer, or to its redelivered message.
ORPHANED_COMPLETION_S = 60.0
HOLD_POLL_S = 2.0  # a held message's heartbeat and stop check while the database is down
T = TypeVar("T")


class Action(enum.StrEnum):
    """What the I/O thread does with a finished message (also the metrics outcome label)."""

    ACKED = "acked"
    DEAD_LETTERED = "dead_lettered"  # copied to the DLQ with its reason, then acked
    REQUEUED = "requeued"


class WorkAbandonedError(Exception):
    """The shutdown grace period ran out: stop at the next image boundary (not an error)."""


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(max, initial * 2**attempt)]."""
    return rng.uniform(0, min(max_s, initial_s * 2 ** min(attempt, 30)))


@dataclass(frozen=True)
class OutgoingMessage:
    """A message the handler wants published; the daemon's I/O thread sends it as it is."""

    body: bytes
    exchange: str
    routing_key: str
    event_type: str | None
    headers: Mapping[str, Any] | None
    message_id: str | None
    priority: int | None
    content_type: str | None
    session_id: int | None  # publish only on this broker session (None: any)


class Publish(Protocol):
    """Publish with confirm + mandatory, blocking until the broker confirms (thread-safe)."""

    def __call__(self, message: OutgoingMessage) -> None: ...


@dataclass(frozen=True, kw_only=True)
class HandlingOptions:
    """The handler's slice of ``Settings``: where messages go, how long to retry and wait.
    Each field is named as its setting is."""

    events_queue: str
    work_queue: str
    results_exchange: str
    results_routing_key: str
    images_per_work_item: int
    inspection_visibility_retries: int
    database_retry_attempts: int
    database_outage_hold_s: float
    publish_timeout_s: float
    retry_initial_wait_s: float
    retry_max_wait_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HandlingOptions:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


class MessageHandler:
    """Turns one delivery into rows, work items or a dead letter, and says how to settle it."""

    def __init__(
        self,
        options: HandlingOptions,
        pipeline: Pipeline,
        metrics: WorkerMetrics,
        publish: Publish,
        *,
        stopping: threading.Event,
        abandon: threading.Event,
        rng: random.Random | None = None,
        gate: DatabaseGate | None = None,
    ) -> None:
        self.options = options
        self.pipeline = pipeline
        self.metrics = metrics
        self._publish_body = publish
        self._stopping = stopping  # a stop was requested: stop retrying
        self._abandon = abandon  # the grace period ran out: stop at the next image
        self._rng = rng or random.Random()
        self.gate = gate or DatabaseGate(
            lambda: pipeline.probe_database(), delay=self.delay, stopping=stopping
        )
        self._local = threading.local()  # the heartbeat of the message this thread handles

    @property
    def _beat(self) -> Heartbeat:
        beat: Heartbeat | None = getattr(self._local, "beat", None)
        return beat or NO_HEARTBEAT

    def handle(self, delivery: Delivery, heartbeat: Heartbeat | None = None) -> Action:
        """Decode, then plan or process; returns what the I/O thread must do with it.

        ``heartbeat`` is told as the work moves (the daemon's liveness watches it)."""
        self._local.beat = heartbeat
        try:
            return self._handle(delivery)
        finally:
            self._local.beat = None

    def _handle(self, delivery: Delivery) -> Action:
        try:
            event = decode_event(delivery.body)
        except EventError as error:
            return self._dead_letter(delivery, error)
        expected: type[Event] = (
            InspectionCompleted if delivery.queue == self.options.events_queue else WorkItem
        )
        if not isinstance(event, expected):
            return self._dead_letter(
                delivery,
                EventError(
                    f"a {event.event_type} event does not belong on queue {delivery.queue}",
                    reason="event_wrong_queue",
                ),
            )
        with structlog.contextvars.bound_contextvars(inspection_id=event.containerInspectionId):
            try:
                with self.pipeline.database_errors_described():
                    if isinstance(event, InspectionCompleted):
                        return self._plan(delivery, event)
                    assert isinstance(event, WorkItem)  # the queue check lets nothing else by
                    return self._work(delivery, event)
            except InspectionNotVisibleError as error:
                if self._stopping.is_set():  # retries cut short by a shutdown: not its fault
                    log.warning("message_requeued", reason=error.reason, detail=str(error))
                    return Action.REQUEUED
                retries = self.options.inspection_visibility_retries
                return self._dead_letter(
                    delivery,
                    UnknownInspectionError(f"{error} after {retries} retries"),
                )
            except TransientError as error:
                log.warning("message_requeued", reason=error.reason, detail=str(error))
                return Action.REQUEUED
            except DatabaseError as error:  # not the message's fault we know of: the limit decides
                log.error("message_requeued", reason=error.reason, detail=str(error))
                return Action.REQUEUED
            except PermanentError as error:
                return self._dead_letter(delivery, error)

    def _plan(self, delivery: Delivery, event: InspectionCompleted) -> Action:
        """Split an inspection into work items for the images that still need work."""
        image_ids = self.retry(
            lambda: self.pipeline.plan(event.containerInspectionId, event.blSampleImageIds)
        )
        items = plan_work_items(event, image_ids, self.options.images_per_work_item)
        for item in items:
            self._publish(item, session_id=delivery.session_id)
        action = Action.ACKED
        if not items:  # nothing left to do: the completion (or its announcement) may be owed
            outcome = self.retry(
                lambda: self.pipeline.complete_inspection(event.containerInspectionId)
            )
            action = self._announce(delivery, outcome)
        log.info("inspection_planned", work_items=len(items), images=len(image_ids))
        return action

    def _work(self, delivery: Delivery, item: WorkItem) -> Action:
        def progress(update: ImageProgress) -> None:
            self.metrics.images.labels(update.outcome).inc()
            if update.outcome == "failed" and update.reason:
                self.metrics.failures.labels(update.reason).inc()
            if update.outcome in ("done", "unchanged", "failed"):
                self.metrics.image_seconds.observe(update.seconds)
            if self._abandon.is_set():
                raise WorkAbandonedError

        outcome = self.retry(
            lambda: self.pipeline.process(
                item.containerInspectionId, item.blSampleImageIds, progress, heartbeat=self._beat
            )
        )
        return self._announce(delivery, outcome)

    def _results_owed(self, delivery: Delivery, outcome: WorkOutcome) -> bool:
        """This call completed the inspection, or it is done and its results-ready unconfirmed.

        The second case counts on a redelivered message (a killed completer's own message comes
        back redelivered), or when the completion is older than ``ORPHANED_COMPLETION_S``; a
        fresh message racing a live completer leaves the announcing to it.
        """
        if outcome.completed_inspection:
            return True
        completed_s_ago = None if delivery.redelivered else ORPHANED_COMPLETION_S
        return self.retry(
            lambda: self.pipeline.results_pending_publication(
                outcome.inspection_id, completed_s_ago=completed_s_ago
            )
        )

    def _announce(self, delivery: Delivery, outcome: WorkOutcome) -> Action:
        """Publish results-ready when owed, record it once confirmed; say how to settle.

        At least once: a worker killed after the confirm but before the record, or two workers
        both finding the announcement owed, send a duplicate; consumers treat it as a refresh.
        Not published for a broker outage: requeued, and the redelivery owes it still.
        """
        if not self._results_owed(delivery, outcome):
            return Action.ACKED
        # the event carries the plate's new hits, from the time course (brought up to date)
        event = self.retry(
            lambda: self.pipeline.results_ready(outcome.inspection_id, outcome.image_count)
        )
        for attempt in range(RESULTS_READY_ATTEMPTS):
            try:
                self._publish(
                    event,
                    exchange=self.options.results_exchange,
                    routing_key=self.options.results_routing_key,
                )
            except UnroutableMessageError as error:
                # nothing bound to the results exchange: acked; still owed, so the next
                # redelivered or late event for this inspection announces it
                log.error("results_ready_unroutable", detail=str(error))
                return Action.ACKED
            except BrokerUnavailableError as error:
                if self._abandon.is_set():
                    break
                log.warning("results_ready_publish_retry", attempt=attempt + 1, error=str(error))
                self._abandon.wait(self.delay(attempt))
            else:
                self.retry(lambda: self.pipeline.mark_results_published(outcome.inspection_id))
                log.info(
                    "results_ready_published",
                    images=outcome.image_count,
                    completed_here=outcome.completed_inspection,
                )
                return Action.ACKED
        log.error(
            "results_ready_not_published",
            detail="requeued: the inspection is done in the database and its redelivery "
            "publishes results-ready",
        )
        return Action.REQUEUED

    def _dead_letter(self, delivery: Delivery, error: ChimpError) -> Action:
        """Copy the message to its DLQ with the reason in headers (confirmed), then ack it."""
        log.error("message_dead_lettered", reason=error.reason, detail=str(error))
        self.metrics.failures.labels(error.reason).inc()
        try:
            self._publish_body(
                OutgoingMessage(
                    delivery.body,
                    exchange="",
                    routing_key=dead_letter_queue(delivery.queue),
                    event_type=delivery.properties.get("type"),
                    headers=dead_letter_headers(delivery, error.reason, str(error)),
                    message_id=delivery.message_id,
                    priority=None,
                    content_type=delivery.properties.get("content_type"),
                    session_id=delivery.session_id,
                )
            )
        except BrokerUnavailableError:
            return Action.REQUEUED  # stale anyway: the redelivery will be dead-lettered
        return Action.DEAD_LETTERED

    def _publish(
        self,
        event: Event,
        *,
        session_id: int | None = None,
        exchange: str = "",
        routing_key: str | None = None,
    ) -> None:
        self._beat.expect(self.options.publish_timeout_s, "publishing")
        self._publish_body(
            OutgoingMessage(
                event.encode(),
                exchange=exchange,
                routing_key=routing_key or self.options.work_queue,
                event_type=event.event_type,
                headers=None,
                message_id=None,
                priority=getattr(event, "priority", None),
                content_type=CONTENT_TYPE,
                session_id=session_id,
            )
        )

    def retry(self, unit: Callable[[], T]) -> T:
        """Run a unit of work, retrying transient errors with jittered back-off.

        Database errors get ``database_retry_attempts`` tries, an inspection that is not
        visible yet ``inspection_visibility_retries`` more; a stop request ends the retries.
        When the database errors outlast the tries and a probe finds the database down, the
        unit is held until it answers (``outage.py``), at most ``database_outage_hold_s``,
        then tried afresh; past the bound the error goes to the caller (requeue).
        """
        held_since: float | None = None
        while True:
            try:
                return self._retry_quickly(unit)
            except DatabaseUnavailableError as error:
                hold_s = self.options.database_outage_hold_s
                if self._stopping.is_set() or hold_s <= 0 or self.gate.check():
                    raise  # a stop, no holding, or the database answers: the unit's own failure
                held_since = held_since or time.monotonic()
                if not self._hold(held_since, error):
                    self.metrics.database_holds.labels("returned").inc()
                    raise DatabaseUnavailableError(
                        f"the database did not answer for {time.monotonic() - held_since:.0f} s "
                        f"(database_outage_hold_s {hold_s:g}): {error}"
                    ) from error
                self.metrics.database_holds.labels("resumed").inc()
                log.info("database_back_resuming", held_s=round(time.monotonic() - held_since, 1))

    def _hold(self, held_since: float, error: DatabaseUnavailableError) -> bool:
        """Wait for the gate to open: True when it did within the bound, False on a stop or
        once ``database_outage_hold_s`` has passed since ``held_since``."""
        bound = held_since + self.options.database_outage_hold_s
        log.warning(
            "message_held_for_database",
            detail=str(error),
            hold_s=self.options.database_outage_hold_s,
            held_s=round(time.monotonic() - held_since, 1),
        )
        while not self._stopping.is_set():
            remaining = bound - time.monotonic()
            if remaining <= 0:
                return False
            wait = min(remaining, HOLD_POLL_S)
            self._beat.expect(wait, "holding the message: the database does not answer")
            if self.gate.wait(wait):
                return True
        return False

    def _retry_quickly(self, unit: Callable[[], T]) -> T:
        options = self.options

        def give_up(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, DatabaseUnavailableError) and self.gate.is_down:
                return True  # known down: hold at once instead of spending the tries
            limit = (
                options.inspection_visibility_retries + 1
                if isinstance(error, InspectionNotVisibleError)
                else options.database_retry_attempts
            )
            return state.attempt_number >= limit or self._stopping.is_set()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, DatabaseUnavailableError):
                self.metrics.database_retries.inc()
            wait = state.next_action.sleep if state.next_action else 0.0
            self._beat.expect(wait, "retrying after a transient error")
            log.warning(
                "unit_retrying",
                attempt=state.attempt_number,
                reason=getattr(error, "reason", None),
                detail=str(error),
            )

        retrying = tenacity.Retrying(
            stop=give_up,
            wait=lambda state: self.delay(state.attempt_number - 1),
            retry=tenacity.retry_if_exception_type(TransientError),
            sleep=self._pause,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(unit)

    def _pause(self, seconds: float) -> None:
        """Sleep between retries, cut short when a stop is requested."""
        self._stopping.wait(seconds)

    def delay(self, attempt: int) -> float:
        initial = self.options.retry_initial_wait_s
        return (
            backoff_delay(attempt, initial, self.options.retry_max_wait_s, self._rng) + initial / 2
        )
