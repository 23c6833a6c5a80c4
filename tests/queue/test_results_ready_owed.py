"""Results-ready is published at least once, even for a worker killed right after completing.

The crash window is reproduced exactly: ``Pipeline.process`` commits every image and the
completion (what the killed worker had done), nothing is published, and the work item comes
back from the broker with its redelivered flag set (a consumer took it and vanished without an
ack). A real SIGKILL in that window is in tests/faults/test_worker_killed.py.
"""

from __future__ import annotations

import datetime

import pika
import pytest
import structlog
from helpers.analysers import PixelStatsAnalyser
from helpers.rabbit import RabbitProbe
from helpers.workers import PlateWorld, running_workers
from sqlalchemy import select

from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.events import WorkItem
from chimp_worker.ispyb import progress
from chimp_worker.ispyb.worker_tables import ChimpInspection
from chimp_worker.wiring import make_pipeline

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mariadb]


def complete_without_announcing(world: PlateWorld) -> None:
    """Everything a worker commits before it is killed in the window: rows and completion."""
    pipeline = make_pipeline(world.settings, analyser=PixelStatsAnalyser())
    try:
        assert pipeline.process(world.inspection_id).completed_inspection
    finally:
        pipeline.close()


def published_at(world: PlateWorld) -> datetime.datetime | None:
    with world.factory() as session:
        return session.scalar(
            select(ChimpInspection.resultsPublishedAt).where(
                ChimpInspection.containerInspectionId == world.inspection_id
            )
        )


def queue_work_item(world: PlateWorld, *, redelivered: bool) -> None:
    """One work item for two images of the plate; redelivered: taken once and never acked."""
    item = WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=world.image_ids[:2])
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(item)
    if redelivered:
        connection = pika.BlockingConnection(pika.URLParameters(world.settings.amqp_url))
        method, _properties, _body = connection.channel().basic_get(world.settings.work_queue)
        assert method is not None
        assert not method.redelivered
        connection.close()  # the "killed" consumer: the broker requeues it, flagged redelivered


def run_worker_until_idle(world: PlateWorld) -> tuple[PixelStatsAnalyser, list[dict[str, object]]]:
    analyser = PixelStatsAnalyser()
    with structlog.testing.capture_logs() as logs, running_workers() as start:
        worker = start(world.settings, analyser, name="w1", idle_exit_s=1.5)
        worker.join()
    assert worker.exit_codes == [0]
    return analyser, logs


def test_a_redelivered_work_item_announces_a_completion_whose_worker_died_before_publishing(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    complete_without_announcing(world)
    assert progress.results_pending_publication(world.factory, world.inspection_id)
    queue_work_item(world, redelivered=True)

    analyser, logs = run_worker_until_idle(world)

    [ready] = rabbit.take_all(world.settings.results_queue)
    assert ready.message_type == "inspection.results-ready"
    assert (ready.json["containerInspectionId"], ready.json["imageCount"]) == (
        world.inspection_id,
        6,
    )
    assert published_at(world) is not None
    assert not progress.results_pending_publication(world.factory, world.inspection_id)
    assert not analyser.calls, "nothing re-analysed: every image was already committed"
    assert [entry["outcome"] for entry in logs if entry["event"] == "message_done"] == ["acked"]
    [announced] = [entry for entry in logs if entry["event"] == "results_ready_published"]
    assert announced["completed_here"] is False
    assert rabbit.count(world.settings.work_queue) == 0

    queue_work_item(world, redelivered=True)  # redelivered again after the mark: paid already
    run_worker_until_idle(world)
    assert rabbit.take_all(world.settings.results_queue) == []


def test_a_fresh_message_leaves_a_fresh_completion_to_its_completer_but_pays_an_old_debt(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    complete_without_announcing(world)
    queue_work_item(world, redelivered=False)  # e.g. a duplicate racing a live completer
    run_worker_until_idle(world)
    assert rabbit.take_all(world.settings.results_queue) == []
    assert published_at(world) is None, "still owed"

    # Its completer never announced it (replay --local, or a lost message): over a minute
    # later, any message for the inspection pays the debt, exactly once.
    with world.factory.begin() as session:
        row = session.get(ChimpInspection, world.inspection_id)
        assert row is not None
        assert row.completedAt is not None
        row.completedAt -= datetime.timedelta(minutes=2)
    queue_work_item(world, redelivered=False)
    queue_work_item(world, redelivered=False)
    run_worker_until_idle(world)
    [ready] = rabbit.take_all(world.settings.results_queue)
    assert ready.json["containerInspectionId"] == world.inspection_id
    assert published_at(world) is not None
