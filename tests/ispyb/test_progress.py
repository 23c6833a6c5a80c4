"""Inspection images, what still needs work, and completion exactly once under a race."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers.ispyb_rows import CLASSIFIER, Plate, add_plate, make_analysis
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import ModelRef
from chimp_worker.errors import InspectionNotVisibleError
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.progress import (
    InspectionImage,
    images_needing_work,
    inspection_images,
    mark_images_pending,
    mark_results_published,
    reopen_inspection,
    results_pending_publication,
    try_complete_inspection,
)
from chimp_worker.ispyb.worker_tables import ChimpImageResult, ChimpInspection
from chimp_worker.ispyb.writer import record_image_failure, write_image_result


def test_inspection_images_lists_the_drops(factory: sessionmaker[Session], plate: Plate) -> None:
    other = add_plate(factory, barcode="OTHER-1", drops=2)
    images = inspection_images(factory, plate.inspectionId)
    assert [i.blSampleImageId for i in images] == list(plate.imageIds)
    assert images[2] == InspectionImage(
        blSampleImageId=plate.imageIds[2],
        blSampleId=plate.sampleIds[2],
        imageFullPath=f"/dls/imaging/{plate.containerId}/3.jpg",
        micronsPerPixelX=2.5,
        micronsPerPixelY=2.5,
        location="3",
    )
    assert len(inspection_images(factory, other.inspectionId)) == 2


def test_missing_inspection_is_not_visible(factory: sessionmaker[Session]) -> None:
    with pytest.raises(InspectionNotVisibleError, match="ContainerInspection 4242"):
        inspection_images(factory, 4242)
    with pytest.raises(InspectionNotVisibleError):
        images_needing_work(factory, 4242)


def test_images_needing_work(factory: sessionmaker[Session], plate: Plate) -> None:
    a, b, c, d = plate.imageIds
    assert images_needing_work(factory, plate.inspectionId) == [a, b, c, d]
    assert mark_images_pending(factory, plate.inspectionId, [a, b, c, d]) == 4
    write_image_result(factory, a, make_analysis())
    write_image_result(factory, b, make_analysis(models=(CLASSIFIER,)))
    record_image_failure(factory, c, "image_corrupt", "bad JPEG", "chimp")
    assert mark_images_pending(factory, plate.inspectionId, [a, b, c, d]) == 0
    assert images_needing_work(factory, plate.inspectionId) == [c, d]
    assert images_needing_work(factory, plate.inspectionId, include_failed=False) == [d]
    # The models in use are the classifier and detector: b was done with the classifier only.
    current = {"a" * 64, "b" * 64}
    assert images_needing_work(factory, plate.inspectionId, current) == [b, c, d]
    upgraded = ModelRef("classifier", "convnext_tiny", "c" * 64)
    write_image_result(factory, a, make_analysis(models=(upgraded,)))
    assert images_needing_work(factory, plate.inspectionId, {"c" * 64}) == [b, c, d]


def test_completion_waits_for_every_image_then_fires_once(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    *first, last = plate.imageIds
    for image_id in first:
        write_image_result(factory, image_id, make_analysis())
    assert not try_complete_inspection(factory, plate.inspectionId)
    record_image_failure(factory, last, "image_missing", "gone", "chimp")
    assert try_complete_inspection(factory, plate.inspectionId)
    assert not try_complete_inspection(factory, plate.inspectionId)
    with factory() as session:
        row = session.get(ChimpInspection, plate.inspectionId)
        assert row is not None
        assert (row.state, row.imageCount, row.doneCount, row.failedCount) == ("done", 4, 3, 1)
        assert row.completedAt is not None
    assert reopen_inspection(factory, plate.inspectionId)
    assert try_complete_inspection(factory, plate.inspectionId)


def test_changed_counts_of_a_done_inspection_recount_it_and_owe_its_announcement(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    *first, last = plate.imageIds
    for image_id in first:
        write_image_result(factory, image_id, make_analysis())
    record_image_failure(factory, last, "image_missing", "gone", "chimp")
    assert try_complete_inspection(factory, plate.inspectionId)
    assert mark_results_published(factory, plate.inspectionId)
    write_image_result(factory, last, make_analysis())  # the file was restored
    assert try_complete_inspection(factory, plate.inspectionId)  # the counts are out of date
    with factory() as session:
        row = session.get(ChimpInspection, plate.inspectionId)
        assert row is not None
        assert (row.state, row.imageCount, row.doneCount, row.failedCount) == ("done", 4, 4, 0)
        assert row.resultsPublishedAt is None
    assert results_pending_publication(factory, plate.inspectionId)
    assert mark_results_published(factory, plate.inspectionId)
    assert not try_complete_inspection(factory, plate.inspectionId)  # nothing new: no news
    # a new model's result for a done image leaves the counts as they were: the replay that
    # produced it announces it (it reopens the inspection first)
    write_image_result(factory, last, make_analysis(models=(CLASSIFIER,)))
    assert not try_complete_inspection(factory, plate.inspectionId)


def test_inspection_without_images_never_completes(factory: sessionmaker[Session]) -> None:
    empty = add_plate(factory, barcode="EMPTY", drops=0)
    assert not try_complete_inspection(factory, empty.inspectionId)


def test_racing_workers_complete_exactly_once(factory: sessionmaker[Session], plate: Plate) -> None:
    for image_id in plate.imageIds:
        write_image_result(factory, image_id, make_analysis())
    racers = 6
    barrier = threading.Barrier(racers)
    wins: list[bool] = []
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait(timeout=10)
            wins.append(try_complete_inspection(factory, plate.inspectionId))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(wins) == [False] * (racers - 1) + [True]


@pytest.mark.mariadb
def test_two_workers_marking_the_same_images_pending_at_once_both_succeed(
    mariadb_url: str,
) -> None:
    """The race of the same event planned by two workers: both read "no rows yet", both
    insert. MariaDB makes the second wait for the first's rows, then refuse a duplicate key
    (1062), unless the insert tolerates rows that appeared since it looked."""
    from chimp_worker.ispyb.schema import create_all

    create_all(mariadb_url)
    engine = make_engine(mariadb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory, drops=48)
    barrier = threading.Barrier(2)

    @event.listens_for(engine, "before_cursor_execute")
    def insert_together(*args: Any) -> None:
        statement = str(args[2]).lstrip().upper()
        if statement.startswith("INSERT") and "CHIMP_IMAGE_RESULT" in statement:
            barrier.wait(timeout=20)  # each has looked and found nothing: now both insert

    errors: list[BaseException] = []

    def plan() -> None:
        try:
            mark_images_pending(factory, plate.inspectionId, plate.imageIds)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=plan) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [type(error).__name__ for error in errors] == []
        assert images_needing_work(factory, plate.inspectionId) == list(plate.imageIds)
        with factory() as session:
            states = session.execute(
                select(ChimpImageResult.state, func.count()).group_by(ChimpImageResult.state)
            ).all()
        assert states == [("pending", 48)]
    finally:
        engine.dispose()
