"""results-ready announces exactly the drops that became hits at each inspection: the daemon
against the real RabbitMQ and MariaDB, a mock plate imaged four times (the imager's events one
after another, as its schedule spaces them), checked against the plate's ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.plates import plate_settings, small_plate
from helpers.rabbit import RabbitProbe
from helpers.workers import running_workers
from sqlalchemy import select

from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.config import Settings
from chimp_worker.events import InspectionCompleted, decode_event
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import ChimpDropCourse

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mariadb, pytest.mark.slow]


def test_each_results_ready_lists_exactly_the_new_hits(
    ispyb_mariadb_url: str, tmp_path: Path, queue_settings: Settings, rabbit: RabbitProbe
) -> None:
    plate = small_plate(ispyb_mariadb_url, tmp_path / "images", wells=6, inspections=4, seed=1)
    settings = plate_settings(
        ispyb_mariadb_url,
        tmp_path / "images",
        amqp_url=queue_settings.amqp_url,
        events_queue=queue_settings.events_queue,
        work_queue=queue_settings.work_queue,
        results_exchange=queue_settings.results_exchange,
        results_queue=queue_settings.results_queue,
        retry_initial_wait_s=0.05,
        retry_max_wait_s=0.2,
        images_per_work_item=4,
    )
    location_of = dict(zip(plate.blSampleIds, plate.locations, strict=True))
    announced = []
    with running_workers() as start, Publisher(BrokerOptions.from_settings(settings)) as publisher:
        start(settings, None, name="hits-worker")
        for number, inspection in enumerate(plate.inspections, start=1):
            publisher.publish(
                InspectionCompleted(
                    containerInspectionId=inspection.containerInspectionId, barcode=plate.barcode
                )
            )
            assert rabbit.wait_for_count(settings.results_queue, number, timeout_s=90) == number
        announced = [decode_event(m.body) for m in rabbit.take_all(settings.results_queue)]
    assert [event.containerInspectionId for event in announced] == list(
        plate.containerInspectionIds
    )
    engine = make_engine(ispyb_mariadb_url)
    try:
        with make_session_factory(engine)() as session:
            first_hit = dict(
                session.execute(
                    select(ChimpDropCourse.blSampleId, ChimpDropCourse.firstHitInspectionId)
                ).all()
            )
    finally:
        engine.dispose()
    for number, (inspection, event) in enumerate(
        zip(plate.inspections, announced, strict=True), start=1
    ):
        assert (event.containerId, event.barcode) == (plate.containerId, plate.barcode)
        listed = {hit.blSampleId for hit in event.newHits}
        # exactly the drops whose first hit (in the worker's tables) is this inspection...
        assert listed == {
            sample
            for sample, first in first_hit.items()
            if first == inspection.containerInspectionId
        }
        # ...which are the drops whose first crystal the truth shows at this inspection
        assert {location_of[sample] for sample in listed} == {
            location
            for location in plate.locations
            if plate.first_crystal_inspection(location) == number
        }
        for hit in event.newHits:
            assert hit.inspectionNumber == number
            assert hit.location == str(location_of[hit.blSampleId])
            assert (hit.well, hit.drop) == (
                f"A{(location_of[hit.blSampleId] + 1) // 2}",
                2 - location_of[hit.blSampleId] % 2,
            )
            assert hit.crystalCount >= 1
            assert hit.score >= 0.55
    assert [len(event.newHits) for event in announced] == [2, 0, 0, 1]
