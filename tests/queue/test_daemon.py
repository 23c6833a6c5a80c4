"""The daemon against the real RabbitMQ and MariaDB: events in, rows and results-ready out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from helpers.analysers import PixelStatsAnalyser
from helpers.ispyb_rows import snapshot
from helpers.orphans import orphan_sample
from helpers.plates import small_plate
from helpers.rabbit import RabbitProbe
from helpers.workers import (
    PlateWorld,
    image_states,
    inspection_state,
    running_workers,
    score_rows_per_image,
    wait_until,
)
from sqlalchemy import func, select

from chimp_worker.broker import (
    HEADER_DETAIL,
    HEADER_REASON,
    HEADER_SOURCE_QUEUE,
    BrokerOptions,
    Publisher,
)
from chimp_worker.events import InspectionCompleted, WorkItem
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpImageResult

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mariadb]


def auto_targets_per_image(world: PlateWorld) -> tuple[dict[int, int], dict[int, int]]:
    """(crystal targets the worker recorded, source='auto' BLSubSample rows) per image."""
    with world.factory() as session:
        counts = dict(
            session.execute(
                select(ChimpImageResult.blSampleImageId, ChimpImageResult.crystalCount).where(
                    ChimpImageResult.blSampleImageId.in_(world.image_ids)
                )
            ).all()
        )
        subsamples = dict(
            session.execute(
                select(t.BLSubSample.blSampleImageId, func.count())
                .where(t.BLSubSample.source == "auto")
                .where(t.BLSubSample.blSampleImageId.in_(world.image_ids))
                .group_by(t.BLSubSample.blSampleImageId)
            ).all()
        )
    return counts, {image_id: subsamples.get(image_id, 0) for image_id in world.image_ids}


def drained(rabbit: RabbitProbe, world: PlateWorld) -> bool:
    settings = world.settings
    return rabbit.count(settings.events_queue) == 0 and rabbit.count(settings.work_queue) == 0


def test_an_inspection_event_ends_with_every_image_written_and_one_results_ready(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=world.inspection_id))
    with running_workers() as start:  # the weight-free baseline analyser, from settings
        worker = start(world.settings, None, name="w1", idle_exit_s=1.5)
        worker.join()
    assert worker.exit_codes == [0]
    assert worker.pipeline.analyser.name == "baseline"
    assert image_states(world.factory, world.inspection_id) == {
        image_id: ("done", None) for image_id in world.image_ids
    }
    assert score_rows_per_image(world.factory, world.image_ids) == dict.fromkeys(world.image_ids, 4)
    targets, subsamples = auto_targets_per_image(world)
    assert subsamples == targets
    assert sum(targets.values()) > 0  # the plate has crystal drops the baseline finds
    assert inspection_state(world.factory, world.inspection_id) == "done"
    [ready] = rabbit.take_all(world.settings.results_queue)
    assert ready.message_type == "inspection.results-ready"
    assert (ready.json["containerInspectionId"], ready.json["imageCount"]) == (
        world.inspection_id,
        6,
    )
    metrics = worker.metrics
    assert metrics.value("chimp_messages_total", queue="events", outcome="acked") == 1
    assert metrics.value("chimp_messages_total", queue="work", outcome="acked") == 3  # 6 / 2
    assert metrics.value("chimp_images_total", outcome="done") == 6
    assert metrics.value("chimp_events_published_total", type="work.item") == 3
    assert drained(rabbit, world)
    assert rabbit.count(f"dlq.{world.settings.events_queue}") == 0


def test_the_same_event_published_twice_gives_identical_rows_and_one_results_ready(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    event = InspectionCompleted(containerInspectionId=world.inspection_id, barcode="MOCK-0001")
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(event)
        publisher.publish(event)
    with running_workers() as start:
        start(world.settings, None, name="w1", idle_exit_s=1.5).join()
    first = snapshot(world.factory)
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(event)
    with running_workers() as start:
        again = start(world.settings, None, name="w2", idle_exit_s=1.5)
        again.join()
    assert snapshot(world.factory) == first
    assert again.metrics.value("chimp_events_published_total", type="work.item") == 0
    assert len(rabbit.take_all(world.settings.results_queue)) == 1


def test_two_workers_on_one_plate_process_every_image_once_and_complete_it_once(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    analysers = [
        PixelStatsAnalyser(seconds_per_image=0.3),
        PixelStatsAnalyser(seconds_per_image=0.3),
    ]
    with running_workers() as start:
        workers = [
            start(world.settings, analyser, name=f"w{n}", idle_exit_s=2.0)
            for n, analyser in enumerate(analysers)
        ]
        with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
            publisher.publish(InspectionCompleted(containerInspectionId=world.inspection_id))
        for worker in workers:
            worker.join()
    sources = {image.imageFullPath for image in world.plate.latest.images}
    analysed = analysers[0].calls + analysers[1].calls
    assert set(analysed) == sources
    assert set(analysed.values()) == {1}, "every image analysed exactly once between them"
    assert all(analyser.calls for analyser in analysers), "both workers took work items"
    assert set(analysers[0].calls).isdisjoint(analysers[1].calls)
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert len(rabbit.take_all(world.settings.results_queue)) == 1


def test_malformed_messages_go_to_the_dead_letter_queue_at_once_with_their_reason(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    settings = world.settings
    rabbit.declare(settings)
    rabbit.publish_raw(settings.events_queue, b"{not json")
    rabbit.publish_raw(settings.work_queue, b'{"type": "work.item", "version": 1}')
    with structlog.testing.capture_logs() as logs, running_workers() as start:
        worker = start(settings, PixelStatsAnalyser(), name="w1", idle_exit_s=1.5)
        worker.join()
    [bad_event] = rabbit.take_all(f"dlq.{settings.events_queue}")
    assert bad_event.body == b"{not json"
    assert bad_event.headers[HEADER_REASON] == "event_not_json"
    assert "not JSON" in bad_event.headers[HEADER_DETAIL]
    assert bad_event.headers[HEADER_SOURCE_QUEUE] == settings.events_queue
    assert bad_event.headers["x-delivery-count"] == 0  # dead-lettered on first delivery
    [bad_work] = rabbit.take_all(f"dlq.{settings.work_queue}")
    assert bad_work.headers[HEADER_REASON] == "event_missing_field"
    assert "containerInspectionId" in bad_work.headers[HEADER_DETAIL]
    reasons = {entry.get("reason") for entry in logs if entry["event"] == "message_dead_lettered"}
    assert reasons == {"event_not_json", "event_missing_field"}
    assert (
        worker.metrics.value("chimp_messages_total", queue="events", outcome="dead_lettered") == 1
    )
    assert drained(rabbit, world)


def test_an_unknown_inspection_is_retried_a_bounded_number_of_times_then_dead_lettered(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=987654))
    with structlog.testing.capture_logs() as logs, running_workers() as start:
        start(world.settings, PixelStatsAnalyser(), name="w1", idle_exit_s=1.5).join()
    [dead] = rabbit.take_all(f"dlq.{world.settings.events_queue}")
    assert dead.headers[HEADER_REASON] == "unknown_inspection"
    assert "987654" in dead.headers[HEADER_DETAIL]
    retries = [entry for entry in logs if entry["event"] == "unit_retrying"]
    assert [entry["attempt"] for entry in retries] == [1, 2]  # inspection_visibility_retries
    assert {entry["reason"] for entry in retries} == {"inspection_not_visible"}


def test_work_naming_images_of_another_inspection_is_dead_lettered_before_any_write(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(
            WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=(1, 555555))
        )
    with running_workers() as start:
        start(world.settings, PixelStatsAnalyser(), name="w1", idle_exit_s=1.5).join()
    [dead] = rabbit.take_all(f"dlq.{world.settings.work_queue}")
    assert dead.headers[HEADER_REASON] == "unknown_image"
    assert json.loads(dead.body)["blSampleImageIds"] == [1, 555555]
    assert image_states(world.factory, world.inspection_id) == {}


def test_max_messages_stops_after_that_many_and_leaves_the_rest_queued(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=world.inspection_id))
    with running_workers() as start:
        worker = start(world.settings, PixelStatsAnalyser(), name="w1", max_messages=2)
        worker.join()
    assert worker.exit_codes == [0]
    # the event and one work item of 2 images; the other 2 work items wait for another worker
    assert len(image_states(world.factory, world.inspection_id)) == 6  # all marked at planning
    done = [s for s, _ in image_states(world.factory, world.inspection_id).values() if s == "done"]
    assert len(done) == 2
    wait_until(lambda: rabbit.count(world.settings.work_queue) == 2, 10, "2 work items queued")


def test_an_inspection_committed_after_its_event_is_planned_once_it_becomes_visible(
    world: PlateWorld, rabbit: RabbitProbe, tmp_path: Path
) -> None:
    settings = world.settings.model_copy(
        update={
            "inspection_visibility_retries": 8,
            "retry_initial_wait_s": 0.5,
            "retry_max_wait_s": 1.0,
        }
    )
    late_id = world.inspection_id + 1  # the next inspection the imager will write
    with Publisher(BrokerOptions.from_settings(settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=late_id))
    with structlog.testing.capture_logs() as logs, running_workers() as start:
        worker = start(settings, PixelStatsAnalyser(), name="w1", idle_exit_s=1.5)
        wait_until(lambda: any(e["event"] == "unit_retrying" for e in logs), 20, "a retry")
        late = small_plate(settings.database_url, tmp_path / "images", barcode="LATE-1", wells=1)
        worker.join()
    assert late.latest.containerInspectionId == late_id
    assert image_states(world.factory, late_id) == {
        image_id: ("done", None) for image_id in late.latest.blSampleImageIds
    }
    assert rabbit.count(f"dlq.{settings.events_queue}") == 0
    [ready] = rabbit.take_all(settings.results_queue)
    assert ready.json["containerInspectionId"] == late_id


def test_a_write_the_database_refuses_fails_one_image_and_every_message_is_acked_once(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    """Not a crash, not six deliveries of inference and a dead letter: one failed image with
    the database's reason, the rest of the plate written, the inspection done and announced."""
    orphan = world.plate.latest.images[2]
    orphan_sample(world.settings.database_url, orphan.blSampleId)
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=world.inspection_id))
    analyser = PixelStatsAnalyser()  # a target and a dispense point on every image
    with running_workers() as start:
        worker = start(world.settings, analyser, name="w1", idle_exit_s=1.5)
        worker.join()
    assert worker.exit_codes == [0]
    states = image_states(world.factory, world.inspection_id)
    assert states.pop(orphan.blSampleImageId) == ("failed", "db_refused_foreign_key")
    assert set(states.values()) == {("done", None)}
    assert set(analyser.calls.values()) == {1}
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert len(rabbit.take_all(world.settings.results_queue)) == 1
    metrics = worker.metrics
    assert metrics.value("chimp_messages_total", queue="work", outcome="acked") == 3
    assert metrics.value("chimp_messages_total", queue="work", outcome="requeued") == 0
    assert metrics.value("chimp_messages_total", queue="work", outcome="dead_lettered") == 0
    assert drained(rabbit, world)
    assert rabbit.count(f"dlq.{world.settings.work_queue}") == 0
