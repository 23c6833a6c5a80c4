"""``MessageHandler.handle`` on its own: a recording publish function and an SQLite ISPyB.

No broker and no daemon: each test hands the handler one ``Delivery`` and checks what it
decided (the ``Action``), what it asked to publish (routing keys, bodies, dead-letter headers)
and the rows it left. The daemon's tests (tests/queue) cover the same rules end to end; these
pin every branch of the decision where a failure names its branch. The queue's delivery limit
(a message that fails too often) is the broker's, not the handler's: see tests/queue.
"""

from __future__ import annotations

import datetime
import json
import random
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.analysers import PixelStatsAnalyser
from helpers.plates import plate_settings, small_plate
from helpers.workers import image_states, inspection_state
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.broker import (
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_QUEUE,
    Delivery,
)
from chimp_worker.config import Settings
from chimp_worker.errors import BrokerUnavailableError, UnroutableMessageError
from chimp_worker.events import (
    CONTENT_TYPE,
    Event,
    InspectionCompleted,
    ResultsReady,
    WorkItem,
    decode_event,
)
from chimp_worker.handling import (
    RESULTS_READY_ATTEMPTS,
    Action,
    HandlingOptions,
    MessageHandler,
    OutgoingMessage,
)
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.progress import reopen_inspection, results_pending_publication
from chimp_worker.ispyb.worker_tables import ChimpInspection
from chimp_worker.metrics import WorkerMetrics
from chimp_worker.mock_imager.plate import MockPlate
from chimp_worker.pipeline import Pipeline
from chimp_worker.wiring import make_pipeline

EVENTS = "test.events"
WORK = "test.work"
RESULTS_EXCHANGE = "test.results"
RESULTS_KEY = "test.results-ready"
SESSION_ID = 7


@dataclass
class RecordingPublish:
    """The handler's ``publish``: keeps every message; ``failures`` are raised first, in order."""

    sent: list[OutgoingMessage] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    attempts: int = 0

    def __call__(self, message: OutgoingMessage) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)

    def events(self, routing_key: str) -> list[Event]:
        """The bodies sent with ``routing_key``, decoded."""
        return [decode_event(m.body) for m in self.sent if m.routing_key == routing_key]


@dataclass
class HandlerWorld:
    """A 4-image plate in SQLite, a pipeline on it and a handler that publishes to a recorder."""

    settings: Settings
    plate: MockPlate
    pipeline: Pipeline
    handler: MessageHandler
    publish: RecordingPublish
    factory: sessionmaker[Session]
    stopping: threading.Event
    abandon: threading.Event

    @property
    def inspection_id(self) -> int:
        return self.plate.latest.containerInspectionId

    @property
    def image_ids(self) -> tuple[int, ...]:
        return self.plate.latest.blSampleImageIds

    def handle(
        self,
        body: Event | bytes,
        *,
        queue: str | None = None,
        redelivered: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> Action:
        if isinstance(body, bytes):
            raw = body
            queue = queue or EVENTS
        else:
            raw = body.encode()
            queue = queue or (EVENTS if isinstance(body, InspectionCompleted) else WORK)
        delivery = Delivery(
            queue=queue,
            delivery_tag=1,
            body=raw,
            session_id=SESSION_ID,
            redelivered=redelivered,
            message_id="message-1",
            headers={"x-origin": "test"},
            properties=properties or {"type": "whatever", "content_type": CONTENT_TYPE},
        )
        return self.handler.handle(delivery)

    def published_at(self) -> datetime.datetime | None:
        with self.factory() as session:
            return session.scalar(
                select(ChimpInspection.resultsPublishedAt).where(
                    ChimpInspection.containerInspectionId == self.inspection_id
                )
            )

    def results_owed(self) -> bool:
        return results_pending_publication(self.factory, self.inspection_id)

    def counter(self, name: str, **labels: str) -> float:
        value = self.handler.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def make_world(url: str, image_root: Path, **overrides: Any) -> Iterator[HandlerWorld]:
    plate = small_plate(url, image_root, wells=2)
    values: dict[str, Any] = {
        "events_queue": EVENTS,
        "work_queue": WORK,
        "results_exchange": RESULTS_EXCHANGE,
        "results_routing_key": RESULTS_KEY,
        "images_per_work_item": 2,
        "inspection_visibility_retries": 2,
        "retry_initial_wait_s": 0.01,
        "retry_max_wait_s": 0.02,
    }
    values.update(overrides)
    settings = plate_settings(url, image_root, **values)
    pipeline = make_pipeline(settings, analyser=PixelStatsAnalyser())
    publish = RecordingPublish()
    stopping, abandon = threading.Event(), threading.Event()
    handler = MessageHandler(
        HandlingOptions.from_settings(settings),
        pipeline,
        WorkerMetrics.create(),
        publish,
        stopping=stopping,
        abandon=abandon,
        rng=random.Random(0),
    )
    engine = make_engine(url)
    try:
        yield HandlerWorld(
            settings,
            plate,
            pipeline,
            handler,
            publish,
            make_session_factory(engine),
            stopping,
            abandon,
        )
    finally:
        stopping.set()  # ends a database gate's prober, if an outage started one
        engine.dispose()
        pipeline.close()


@pytest.fixture
def world(ispyb_sqlite_url: str, tmp_path: Path) -> Iterator[HandlerWorld]:
    yield from make_world(ispyb_sqlite_url, tmp_path / "images")


def assert_dead_lettered(
    world: HandlerWorld, action: Action, body: bytes, queue: str, reason: str
) -> OutgoingMessage:
    """One message, the original body, to ``dlq.<queue>`` with the reason; returns it."""
    assert action == Action.DEAD_LETTERED
    [letter] = world.publish.sent
    assert (letter.exchange, letter.routing_key) == ("", f"dlq.{queue}")
    assert letter.body == body
    assert letter.message_id == "message-1"
    assert letter.event_type == "whatever"
    assert letter.content_type == CONTENT_TYPE
    assert letter.session_id == SESSION_ID
    assert letter.headers is not None
    assert letter.headers[HEADER_REASON] == reason
    assert letter.headers[HEADER_SOURCE_QUEUE] == queue
    assert letter.headers["x-origin"] == "test", "the original headers are kept"
    assert world.counter("chimp_failures_total", reason=reason) == 1
    return letter


# --- dead letters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "event_empty"),
        (b"{not json", "event_not_json"),
        (b"[1, 2]", "event_not_object"),
        (b'{"type": "inspection.imaged", "version": 1}', "event_unknown_type"),
        (b'{"type": "work.item", "version": 99}', "event_unsupported_version"),
        (b'{"type": "inspection.completed", "version": 1}', "event_missing_field"),
    ],
)
def test_a_malformed_event_is_dead_lettered_with_its_reason(
    world: HandlerWorld, body: bytes, reason: str
) -> None:
    action = world.handle(body)
    assert_dead_lettered(world, action, body, EVENTS, reason)
    assert image_states(world.factory, world.inspection_id) == {}


@pytest.mark.parametrize("on_queue", [EVENTS, WORK])
def test_an_event_on_the_wrong_queue_is_dead_lettered(world: HandlerWorld, on_queue: str) -> None:
    event: Event = (
        WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=world.image_ids[:1])
        if on_queue == EVENTS
        else InspectionCompleted(containerInspectionId=world.inspection_id)
    )
    action = world.handle(event, queue=on_queue)
    letter = assert_dead_lettered(world, action, event.encode(), on_queue, "event_wrong_queue")
    assert letter.headers is not None
    assert letter.headers[HEADER_DETAIL] == (
        f"a {event.event_type} event does not belong on queue {on_queue}"
    )
    assert image_states(world.factory, world.inspection_id) == {}


@pytest.mark.parametrize("kind", ["inspection", "work"])
def test_an_inspection_still_unknown_after_the_retries_is_dead_lettered(
    world: HandlerWorld, kind: str
) -> None:
    missing = world.inspection_id + 1000
    event: Event = (
        InspectionCompleted(containerInspectionId=missing)
        if kind == "inspection"
        else WorkItem(containerInspectionId=missing, blSampleImageIds=(1,))
    )
    action = world.handle(event)
    queue = EVENTS if kind == "inspection" else WORK
    letter = assert_dead_lettered(world, action, event.encode(), queue, "unknown_inspection")
    assert letter.headers is not None
    assert letter.headers[HEADER_DETAIL] == (
        f"ContainerInspection {missing} is not visible (yet) in the database after 2 retries"
    )


def test_an_unknown_inspection_is_requeued_not_dead_lettered_when_a_stop_cut_its_retries(
    world: HandlerWorld,
) -> None:
    world.stopping.set()
    action = world.handle(InspectionCompleted(containerInspectionId=world.inspection_id + 1000))
    assert action == Action.REQUEUED
    assert world.publish.sent == []


@pytest.mark.parametrize("kind", ["inspection", "work"])
def test_an_image_not_of_the_inspection_is_dead_lettered(world: HandlerWorld, kind: str) -> None:
    stranger = max(world.image_ids) + 1000
    ids = (world.image_ids[0], stranger)
    event: Event = (
        InspectionCompleted(containerInspectionId=world.inspection_id, blSampleImageIds=ids)
        if kind == "inspection"
        else WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=ids)
    )
    action = world.handle(event)
    queue = EVENTS if kind == "inspection" else WORK
    letter = assert_dead_lettered(world, action, event.encode(), queue, "unknown_image")
    assert letter.headers is not None
    assert letter.headers[HEADER_DETAIL] == (
        f"BLSampleImage {stranger} not part of ContainerInspection {world.inspection_id}"
    )
    assert image_states(world.factory, world.inspection_id) == {}, "nothing planned or written"


def test_a_dead_letter_the_broker_cannot_take_is_requeued(world: HandlerWorld) -> None:
    world.publish.failures.append(BrokerUnavailableError("connection lost"))
    assert world.handle(b"{not json") == Action.REQUEUED
    assert world.publish.attempts == 1
    assert world.publish.sent == []


# --- planning ----------------------------------------------------------------------------------


def test_an_inspection_is_planned_into_work_items_of_the_images_needing_work(
    world: HandlerWorld,
) -> None:
    event = InspectionCompleted(containerInspectionId=world.inspection_id, priority=3)
    assert world.handle(event) == Action.ACKED

    assert [m.routing_key for m in world.publish.sent] == [WORK, WORK]
    for message in world.publish.sent:
        assert message.exchange == ""
        assert message.event_type == "work.item"
        assert message.content_type == CONTENT_TYPE
        assert message.priority == 3
        assert message.session_id == SESSION_ID, "work items go out on the event's session"
        assert message.headers is None
    ids = world.image_ids
    assert world.publish.events(WORK) == [
        WorkItem(world.inspection_id, ids[0:2], reason="planned", priority=3),
        WorkItem(world.inspection_id, ids[2:4], reason="planned", priority=3),
    ]
    assert image_states(world.factory, world.inspection_id) == {
        image_id: ("pending", None) for image_id in ids
    }
    assert inspection_state(world.factory, world.inspection_id) is None, "not completed"


def test_an_event_naming_images_plans_only_those(world: HandlerWorld) -> None:
    ids = world.image_ids
    event = InspectionCompleted(
        containerInspectionId=world.inspection_id, blSampleImageIds=ids[1:2]
    )
    assert world.handle(event) == Action.ACKED
    assert world.publish.events(WORK) == [WorkItem(world.inspection_id, ids[1:2])]
    assert image_states(world.factory, world.inspection_id) == {ids[1]: ("pending", None)}


def test_work_items_the_broker_cannot_take_requeue_the_event(world: HandlerWorld) -> None:
    world.publish.failures.append(BrokerUnavailableError("connection lost"))
    event = InspectionCompleted(containerInspectionId=world.inspection_id)
    assert world.handle(event) == Action.REQUEUED
    assert world.publish.sent == []
    # the planning was committed: the redelivered event plans the same images again
    assert world.handle(event, redelivered=True) == Action.ACKED
    assert len(world.publish.events(WORK)) == 2


def test_an_inspection_done_and_announced_plans_nothing_and_announces_nothing(
    world: HandlerWorld,
) -> None:
    world.pipeline.process(world.inspection_id)
    assert world.pipeline.mark_results_published(world.inspection_id)
    assert world.handle(InspectionCompleted(containerInspectionId=world.inspection_id)) == (
        Action.ACKED
    )
    assert (
        world.handle(
            InspectionCompleted(containerInspectionId=world.inspection_id), redelivered=True
        )
        == Action.ACKED
    )
    assert world.publish.sent == []


def test_an_event_finding_every_image_done_completes_the_inspection_and_announces_it(
    world: HandlerWorld,
) -> None:
    """All images written, the inspection reopened (as a replay leaves it): the planner has no
    work items to send, so it completes the inspection itself and owes results-ready."""
    world.pipeline.process(world.inspection_id)
    assert reopen_inspection(world.factory, world.inspection_id)

    assert world.handle(InspectionCompleted(containerInspectionId=world.inspection_id)) == (
        Action.ACKED
    )
    [ready] = world.publish.sent
    assert (ready.exchange, ready.routing_key) == (RESULTS_EXCHANGE, RESULTS_KEY)
    [event] = world.publish.events(RESULTS_KEY)
    assert isinstance(event, ResultsReady)
    assert (event.containerInspectionId, event.imageCount, event.analyser) == (
        world.inspection_id,
        4,
        "pixel-stats-test",
    )
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert world.published_at() is not None


# --- work items and results-ready --------------------------------------------------------------


def test_a_work_item_writes_its_images_and_acks_without_announcing(world: HandlerWorld) -> None:
    ids = world.image_ids
    assert world.handle(WorkItem(world.inspection_id, ids[:2])) == Action.ACKED
    assert world.publish.sent == []
    assert image_states(world.factory, world.inspection_id) == {
        ids[0]: ("done", None),
        ids[1]: ("done", None),
    }
    assert world.counter("chimp_images_total", outcome="done") == 2
    assert inspection_state(world.factory, world.inspection_id) == "pending"


def test_the_work_item_that_completes_the_inspection_publishes_results_ready(
    world: HandlerWorld,
) -> None:
    ids = world.image_ids
    assert world.handle(WorkItem(world.inspection_id, ids[:2])) == Action.ACKED
    assert world.published_at() is None
    assert world.handle(WorkItem(world.inspection_id, ids[2:])) == Action.ACKED

    [ready] = world.publish.sent
    assert (ready.exchange, ready.routing_key) == (RESULTS_EXCHANGE, RESULTS_KEY)
    assert ready.event_type == "inspection.results-ready"
    assert ready.content_type == CONTENT_TYPE
    assert ready.session_id is None, "results-ready may go out on any session"
    body = json.loads(ready.body)
    assert body["type"] == "inspection.results-ready"
    assert (body["containerInspectionId"], body["imageCount"]) == (world.inspection_id, 4)
    assert (body["containerId"], body["barcode"]) == (world.plate.containerId, world.plate.barcode)
    assert body["analyser"] == "pixel-stats-test"
    assert image_states(world.factory, world.inspection_id) == {
        image_id: ("done", None) for image_id in ids
    }
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert world.published_at() is not None
    assert not world.results_owed()

    # the same item again (a duplicate): every image skipped, nothing announced twice
    assert world.handle(WorkItem(world.inspection_id, ids[2:]), redelivered=True) == Action.ACKED
    assert len(world.publish.sent) == 1
    assert world.counter("chimp_images_total", outcome="skipped") == 2


def test_a_redelivered_message_announces_a_completion_its_completer_never_announced(
    world: HandlerWorld,
) -> None:
    assert world.pipeline.process(world.inspection_id).completed_inspection  # then killed
    assert world.results_owed()

    item = WorkItem(world.inspection_id, world.image_ids[:2])
    assert world.handle(item, redelivered=True) == Action.ACKED
    [event] = world.publish.events(RESULTS_KEY)
    assert isinstance(event, ResultsReady)
    assert event.containerInspectionId == world.inspection_id
    assert not world.results_owed()


def test_a_fresh_message_leaves_a_fresh_completion_to_its_completer_but_pays_an_old_debt(
    world: HandlerWorld,
) -> None:
    assert world.pipeline.process(world.inspection_id).completed_inspection
    item = WorkItem(world.inspection_id, world.image_ids[:2])
    assert world.handle(item) == Action.ACKED
    assert world.publish.sent == []
    assert world.results_owed()

    with world.factory.begin() as session:
        row = session.get(ChimpInspection, world.inspection_id)
        assert row is not None
        assert row.completedAt is not None
        row.completedAt -= datetime.timedelta(minutes=2)
    assert world.handle(item) == Action.ACKED
    assert [type(event) for event in world.publish.events(RESULTS_KEY)] == [ResultsReady]
    assert not world.results_owed()


def test_results_ready_nobody_is_bound_to_is_acked_and_stays_owed(world: HandlerWorld) -> None:
    world.publish.failures.append(UnroutableMessageError("no queue bound"))
    action = world.handle(WorkItem(world.inspection_id, world.image_ids))
    assert action == Action.ACKED
    assert world.publish.sent == []
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert world.published_at() is None
    assert world.results_owed(), "the next redelivered or late event announces it"


def test_results_ready_is_retried_through_a_broker_blip(world: HandlerWorld) -> None:
    world.publish.failures.extend(
        [BrokerUnavailableError("connection lost")] * (RESULTS_READY_ATTEMPTS - 1)
    )
    assert world.handle(WorkItem(world.inspection_id, world.image_ids)) == Action.ACKED
    assert world.publish.attempts == RESULTS_READY_ATTEMPTS
    assert len(world.publish.events(RESULTS_KEY)) == 1
    assert world.published_at() is not None


def test_results_ready_the_broker_never_takes_requeues_the_message(world: HandlerWorld) -> None:
    world.publish.failures.extend(
        [BrokerUnavailableError("connection lost")] * RESULTS_READY_ATTEMPTS
    )
    assert world.handle(WorkItem(world.inspection_id, world.image_ids)) == Action.REQUEUED
    assert world.publish.attempts == RESULTS_READY_ATTEMPTS
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert world.results_owed(), "its redelivery announces it"


def test_results_ready_is_given_up_at_once_when_the_grace_period_ran_out(
    world: HandlerWorld,
) -> None:
    world.pipeline.process(world.inspection_id)
    assert reopen_inspection(world.factory, world.inspection_id)
    world.publish.failures.append(BrokerUnavailableError("connection lost"))
    world.abandon.set()  # a stop whose grace period is over: no more back-off and retries
    action = world.handle(InspectionCompleted(containerInspectionId=world.inspection_id))
    assert action == Action.REQUEUED
    assert world.publish.attempts == 1
    assert world.results_owed()


# --- the database ------------------------------------------------------------------------------


@pytest.fixture
def locking_world(ispyb_sqlite_url: str, tmp_path: Path, request: Any) -> Iterator[HandlerWorld]:
    """A handler whose SQLite waits 50 ms for a lock, with ``database_outage_hold_s`` from the
    test's ``hold_s`` parameter."""
    yield from make_world(
        ispyb_sqlite_url,
        tmp_path / "images",
        database_connect_args={"timeout": 0.05},
        database_retry_attempts=2,
        database_outage_hold_s=request.param,
    )


def write_lock(world: HandlerWorld) -> sqlite3.Connection:
    """Another process's write transaction on the SQLite file: every worker transaction (they
    all BEGIN IMMEDIATE) finds the database locked, a transient error."""
    path = make_url(world.settings.database_url).database
    assert path
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN IMMEDIATE")
    return connection


@pytest.mark.parametrize("locking_world", [0.0], indirect=True)
def test_a_database_that_stays_locked_requeues_the_message(locking_world: HandlerWorld) -> None:
    world = locking_world
    lock = write_lock(world)
    try:
        action = world.handle(InspectionCompleted(containerInspectionId=world.inspection_id))
    finally:
        lock.rollback()
        lock.close()
    assert action == Action.REQUEUED
    assert world.publish.sent == []
    assert world.counter("chimp_database_retries_total") == 1
    assert image_states(world.factory, world.inspection_id) == {}


@pytest.mark.parametrize("locking_world", [10.0], indirect=True)
def test_a_message_is_held_through_a_database_outage_and_handled_when_it_is_back(
    locking_world: HandlerWorld,
) -> None:
    world = locking_world
    lock = write_lock(world)
    released = threading.Timer(0.5, lock.rollback)
    released.start()
    try:
        action = world.handle(InspectionCompleted(containerInspectionId=world.inspection_id))
    finally:
        released.join()
        lock.close()
    assert action == Action.ACKED
    assert world.counter("chimp_database_holds_total", outcome="resumed") == 1
    assert len(world.publish.events(WORK)) == 2


def test_a_database_error_no_retry_fixes_requeues_the_message(world: HandlerWorld) -> None:
    """The delivery limit, not the handler, decides about a message the database refuses."""
    path = make_url(world.settings.database_url).database
    assert path
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE chimp_image_model")
    action = world.handle(InspectionCompleted(containerInspectionId=world.inspection_id))
    assert action == Action.REQUEUED
    assert world.publish.sent == []
    assert world.counter("chimp_failures_total", reason="database_error") == 0
