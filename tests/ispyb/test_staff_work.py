"""Re-processing never destroys staff work: queued, collected and moved points stay exactly as
they are, another analyser's rows are never touched, and the dispense point staff see is never
deleted, overridden or shadowed by the worker (SQLite, MariaDB, a facility's ISPyB)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.ispyb_rows import Plate, add_plate, make_analysis, snapshot
from helpers.synchweb import (
    add_dispense_point,
    collect_on,
    move_dispense_point,
    plate_view,
    queue_point,
    shown_dispense,
)
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.queries import drop_results, find_plate
from chimp_worker.ispyb.worker_tables import ChimpDetection, ChimpIspybRow
from chimp_worker.ispyb.writer import write_image_result

FIRST = [(100, 40), (30, 200)]
SECOND = [(250, 20)]


def auto_rows(factory: sessionmaker[Session], image_id: int) -> dict[int, tuple[object, ...]]:
    """blSubSampleId -> the whole BLSubSample row and its Position row, for exact comparison."""
    with factory() as session:
        rows = session.execute(
            select(t.BLSubSample.__table__, t.Position.__table__)
            .join(t.Position, t.Position.positionId == t.BLSubSample.positionId)
            .where(t.BLSubSample.blSampleImageId == image_id, t.BLSubSample.source == "auto")
        ).all()
    return {int(row[0]): tuple(row) for row in rows}


def points(factory: sessionmaker[Session], image_id: int) -> list[tuple[float, float]]:
    with factory() as session:
        return sorted(
            session.execute(
                select(t.Position.posX, t.Position.posY)
                .join(t.BLSubSample, t.BLSubSample.positionId == t.Position.positionId)
                .where(t.BLSubSample.blSampleImageId == image_id, t.BLSubSample.source == "auto")
            ).all()
        )


def registry(factory: sessionmaker[Session], row_id: int, table: str) -> ChimpIspybRow | None:
    with factory() as session:
        return session.get(ChimpIspybRow, (table, row_id))


@pytest.fixture
def facility(facility_url: str) -> Iterator[tuple[sessionmaker[Session], Plate]]:
    engine = make_engine(facility_url)
    factory = make_session_factory(engine)
    yield factory, add_plate(factory)
    engine.dispose()


# --- crystal targets ------------------------------------------------------------------------


def test_a_queued_point_is_kept_exactly_and_only_free_points_are_replaced(facility):
    factory, plate = facility
    image = plate.imageIds[0]
    first = write_image_result(factory, image, make_analysis(targets=FIRST))
    queued, free = first.blSubSampleIds
    queue_sample = queue_point(factory, plate.containerId, queued)
    before = auto_rows(factory, image)[queued]

    second = write_image_result(factory, image, make_analysis(targets=SECOND))

    assert second.kept == {queued: "queued by staff"}
    rows = auto_rows(factory, image)
    assert rows[queued] == before  # the sub-sample and its Position, every column as it was
    assert free not in rows
    assert points(factory, image) == [(100.0, 40.0), (250.0, 20.0)]
    view = plate_view(factory, plate.containerId, (plate.inspectionId,))
    assert view.queued == (queued,)  # still in the queue: no CASCADE fired
    with factory() as session:
        assert (
            session.scalar(
                text(
                    "SELECT blSubSampleId FROM ContainerQueueSample"
                    " WHERE containerQueueSampleId = :i"
                ),
                {"i": queue_sample},
            )
            == queued
        )
    entry = registry(factory, queued, "BLSubSample")
    assert entry is not None
    assert (entry.keptReason, entry.analyser) == ("queued by staff", "chimp")
    # results says so, beside the new target
    drop = drop_results(factory, find_plate(factory, barcode="CQX-0001"))[0]
    assert [(tg.x, tg.y, tg.kept) for tg in drop.targets] == [
        (100.0, 40.0, "queued by staff"),
        (250.0, 20.0, None),
    ]


def test_a_point_with_a_data_collection_is_kept_and_the_write_goes_on(facility):
    factory, plate = facility
    image = plate.imageIds[1]
    collected, queued = write_image_result(
        factory, image, make_analysis(targets=FIRST)
    ).blSubSampleIds
    collect_on(factory, collected)
    queue_point(factory, plate.containerId, queued)

    outcome = write_image_result(factory, image, make_analysis(targets=SECOND))  # no 1451

    assert outcome.changed
    assert outcome.kept == {collected: "data collected", queued: "queued by staff"}
    assert points(factory, image) == [(30.0, 200.0), (100.0, 40.0), (250.0, 20.0)]


def test_the_same_result_after_staff_activity_changes_nothing(facility):
    factory, plate = facility
    image = plate.imageIds[0]
    queued, _ = write_image_result(factory, image, make_analysis()).blSubSampleIds
    queue_point(factory, plate.containerId, queued)
    before = snapshot(factory)
    again = write_image_result(factory, image, make_analysis(timings={"model": 1.0}))
    assert not again.changed
    assert snapshot(factory) == before


def test_a_target_on_a_queued_point_reuses_it_instead_of_stacking_a_second(facility):
    factory, plate = facility
    image = plate.imageIds[2]
    queued, _ = write_image_result(factory, image, make_analysis(targets=FIRST)).blSubSampleIds
    queue_point(factory, plate.containerId, queued)
    outcome = write_image_result(factory, image, make_analysis(targets=[(100, 40), (5, 5)]))
    assert outcome.blSubSampleIds[0] == queued
    assert points(factory, image) == [(5.0, 5.0), (100.0, 40.0)]
    with factory() as session:
        linked = session.scalars(
            select(ChimpDetection.blSubSampleId).where(ChimpDetection.blSampleImageId == image)
        ).all()
    assert queued in linked


def test_another_analysers_targets_and_dispense_point_are_never_touched(ispyb_url):
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory)
    image, sample = plate.imageIds[0], plate.sampleIds[0]
    chimp = write_image_result(factory, image, make_analysis(targets=FIRST, dispense=(60, 120)))
    chimp_rows = {i: auto_rows(factory, image)[i] for i in chimp.blSubSampleIds}

    def baseline(targets, dispense, queueable=True):
        result = make_analysis(
            targets=targets, dispense=dispense, schema=BASELINE_SCHEMA, analyser="baseline"
        )
        return write_image_result(factory, image, result, queueable_targets=queueable)

    baseline([(7, 7)], (70, 70), queueable=False)  # the production default: nothing queueable
    assert {i: auto_rows(factory, image)[i] for i in chimp.blSubSampleIds} == chimp_rows
    assert points(factory, image) == [(30.0, 200.0), (100.0, 40.0)]
    baseline([(7, 7)], (70, 70))
    baseline([(8, 8)], (80, 80))  # replaces the baseline's own rows only
    assert points(factory, image) == [(8.0, 8.0), (30.0, 200.0), (100.0, 40.0)]
    assert {i: auto_rows(factory, image)[i] for i in chimp.blSubSampleIds} == chimp_rows
    with factory() as session:
        kept = session.get(t.BLSamplePosition, chimp.blSamplePositionId)
        assert kept is not None
        assert (kept.posX, kept.posY) == (60.0, 120.0)
        assert (
            session.scalar(
                select(func.count())
                .select_from(t.BLSamplePosition)
                .where(t.BLSamplePosition.blSampleId == sample)
            )
            == 2
        )  # CHIMP's and the baseline's latest
    engine.dispose()


def test_a_point_staff_moved_is_kept_where_they_put_it(ispyb_url):
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory)
    image = plate.imageIds[0]
    moved, _ = write_image_result(factory, image, make_analysis(targets=FIRST)).blSubSampleIds
    with factory.begin() as session:
        position = session.scalar(
            select(t.BLSubSample.positionId).where(t.BLSubSample.blSubSampleId == moved)
        )
        session.execute(
            update(t.Position).where(t.Position.positionId == position).values(posX=111.0)
        )
    rescored = make_analysis(targets=FIRST, probabilities={"clear": 1.0})  # same targets
    outcome = write_image_result(factory, image, rescored)
    assert outcome.kept == {moved: "moved by staff"}
    # Not reused for the target at the original point: staff moved it off there.
    assert points(factory, image) == [(30.0, 200.0), (100.0, 40.0), (111.0, 40.0)]
    engine.dispose()


# --- the dispense point ---------------------------------------------------------------------


def dispensing(factory: sessionmaker[Session], sample_id: int) -> list[tuple[int, float, float]]:
    with factory() as session:
        return [
            (int(i), float(x), float(y))
            for i, x, y in session.execute(
                select(
                    t.BLSamplePosition.blSamplePositionId,
                    t.BLSamplePosition.posX,
                    t.BLSamplePosition.posY,
                )
                .where(t.BLSamplePosition.blSampleId == sample_id)
                .order_by(t.BLSamplePosition.blSamplePositionId)
            )
        ]


@pytest.fixture
def written(ispyb_url: str):
    """A plate on each world with the worker's result and dispense point on drop 1."""
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory)
    outcome = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=(60, 120)))
    yield factory, plate, outcome
    engine.dispose()


def test_a_dispense_point_staff_moved_is_never_overridden(written):
    factory, plate, first = written
    sample = plate.sampleIds[0]
    assert move_dispense_point(factory, sample, 65.0, 118.0) == first.blSamplePositionId
    outcome = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=(90, 90)))
    assert (outcome.blSamplePositionId, outcome.dispense_held_by) == (None, "staff")
    assert dispensing(factory, sample) == [(first.blSamplePositionId, 65.0, 118.0)]
    entry = registry(factory, first.blSamplePositionId, "BLSamplePosition")
    assert entry is not None
    assert entry.keptReason == "edited by staff"
    drop = drop_results(factory, find_plate(factory, barcode="CQX-0001"))[0]
    assert (drop.dispenseX, drop.dispenseY, drop.dispenseBy) == (65.0, 118.0, "staff")
    assert drop.dispenseStatus == "ok"  # the worker's own finding for the image


def test_a_newer_staff_dispense_row_is_never_shadowed_nor_deleted(written):
    factory, plate, first = written
    sample = plate.sampleIds[0]
    staff = add_dispense_point(factory, sample, 10.0, 20.0)
    outcome = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=None))
    outcome = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=(90, 90)))
    assert outcome.dispense_held_by == "staff"
    assert dispensing(factory, sample) == [
        (first.blSamplePositionId, 60.0, 120.0),
        (staff, 10.0, 20.0),
    ]
    drop = drop_results(factory, find_plate(factory, barcode="CQX-0001"))[0]
    assert shown_dispense(factory, plate.containerId)[sample] == (staff, 10.0, 20.0)
    assert (drop.dispense.blSamplePositionId, drop.dispenseBy) == (staff, "staff")


def test_an_unchanged_point_keeps_its_row_and_a_new_one_replaces_the_workers(written):
    factory, plate, first = written
    sample = plate.sampleIds[0]
    other_scores = make_analysis(dispense=(60, 120), probabilities={"clear": 1.0})
    assert write_image_result(factory, plate.imageIds[0], other_scores).blSamplePositionId == (
        first.blSamplePositionId
    )
    moved = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=(61, 121)))
    assert dispensing(factory, sample) == [(moved.blSamplePositionId, 61.0, 121.0)]
    assert registry(factory, first.blSamplePositionId, "BLSamplePosition") is None


def test_an_older_inspection_replayed_never_puts_its_point_on_top(ispyb_url):
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory, drops=1)
    sample = plate.sampleIds[0]
    with factory.begin() as session:  # a second, later inspection of the same drop
        newer = t.ContainerInspection(
            containerId=plate.containerId, inspectionTypeId=1, state="Completed"
        )
        session.add(newer)
        session.flush()
        image = t.BLSampleImage(
            blSampleId=sample,
            containerInspectionId=newer.containerInspectionId,
            imageFullPath=f"/dls/imaging/{plate.containerId}/later.jpg",
        )
        session.add(image)
        session.flush()
        latest_image = image.blSampleImageId
    latest = write_image_result(factory, latest_image, make_analysis(dispense=(70, 80)))
    older = write_image_result(factory, plate.imageIds[0], make_analysis(dispense=(10, 10)))
    assert (older.blSamplePositionId, older.dispense_held_by) == (None, "a newer image")
    assert dispensing(factory, sample) == [(latest.blSamplePositionId, 70.0, 80.0)]
    engine.dispose()
