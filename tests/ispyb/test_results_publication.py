"""Two-phase completion: done first, results-ready recorded only once the broker confirmed it.

The gap between the two is what a worker killed after the completion commit leaves behind;
``results_pending_publication`` is how the redelivered message sees it.
"""

from __future__ import annotations

import datetime

from alembic import command
from helpers.ispyb_rows import Plate, make_analysis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.ispyb import schema
from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.progress import (
    mark_results_published,
    reopen_inspection,
    results_pending_publication,
    try_complete_inspection,
)
from chimp_worker.ispyb.worker_tables import ChimpInspection
from chimp_worker.ispyb.writer import utcnow, write_image_result


def published_at(factory: sessionmaker[Session], inspection_id: int) -> datetime.datetime | None:
    with factory() as session:
        return session.scalar(
            select(ChimpInspection.resultsPublishedAt).where(
                ChimpInspection.containerInspectionId == inspection_id
            )
        )


def complete(factory: sessionmaker[Session], plate: Plate) -> None:
    for image_id in plate.imageIds:
        write_image_result(factory, image_id, make_analysis())
    assert try_complete_inspection(factory, plate.inspectionId)


def test_a_completion_is_owed_its_results_ready_until_it_is_marked_published(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    assert not results_pending_publication(factory, plate.inspectionId), "no row yet"
    assert not mark_results_published(factory, plate.inspectionId), "nothing to mark"
    write_image_result(factory, plate.imageIds[0], make_analysis())
    assert not try_complete_inspection(factory, plate.inspectionId)
    assert not results_pending_publication(factory, plate.inspectionId), "pending, not done"
    assert not mark_results_published(factory, plate.inspectionId), "not done: not marked"
    assert published_at(factory, plate.inspectionId) is None

    for image_id in plate.imageIds[1:]:
        write_image_result(factory, image_id, make_analysis())
    assert try_complete_inspection(factory, plate.inspectionId)
    assert results_pending_publication(factory, plate.inspectionId)
    assert published_at(factory, plate.inspectionId) is None

    before = utcnow().replace(microsecond=0) - datetime.timedelta(seconds=1)  # DATETIME(0)
    assert mark_results_published(factory, plate.inspectionId)
    marked = published_at(factory, plate.inspectionId)
    assert marked is not None
    assert before <= marked <= utcnow() + datetime.timedelta(seconds=1)
    assert not results_pending_publication(factory, plate.inspectionId)
    assert not mark_results_published(factory, plate.inspectionId), "marked once only"
    assert published_at(factory, plate.inspectionId) == marked


def test_reopening_clears_the_mark_so_the_next_completion_is_announced_again(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    complete(factory, plate)
    assert mark_results_published(factory, plate.inspectionId)
    assert reopen_inspection(factory, plate.inspectionId)
    assert published_at(factory, plate.inspectionId) is None
    assert not results_pending_publication(factory, plate.inspectionId), "reopened: pending"
    assert try_complete_inspection(factory, plate.inspectionId)
    assert results_pending_publication(factory, plate.inspectionId)


def test_completed_before_leaves_a_fresh_completion_to_its_completer(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    complete(factory, plate)
    with factory() as session:
        completed_at = session.scalar(
            select(ChimpInspection.completedAt).where(
                ChimpInspection.containerInspectionId == plate.inspectionId
            )
        )
    assert completed_at is not None
    second = datetime.timedelta(seconds=1)
    assert results_pending_publication(factory, plate.inspectionId, completed_before=completed_at)
    assert not results_pending_publication(
        factory, plate.inspectionId, completed_before=completed_at - second
    )
    assert results_pending_publication(
        factory, plate.inspectionId, completed_before=completed_at + second
    )


def test_the_migration_adds_the_column_and_backfills_earlier_completions(
    database_url: str,
) -> None:
    engine = make_engine(database_url, create=True)
    try:
        with engine.begin() as connection:
            command.upgrade(schema.alembic_config("core", connection), "head")
            command.upgrade(schema.alembic_config("worker", connection), "worker_0001")
            connection.exec_driver_sql(
                "INSERT INTO chimp_inspection (containerInspectionId, state, createdAt, "
                "completedAt) VALUES (1, 'done', '2026-01-01 00:00:00', '2026-01-02 03:04:05'), "
                "(2, 'pending', '2026-01-01 00:00:00', NULL)"
            )
        report = schema.upgrade(database_url, "worker")
        assert report.before["worker"] == "worker_0001"
        assert report.after["worker"] == schema.head_revisions()["worker"]
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    ChimpInspection.containerInspectionId, ChimpInspection.resultsPublishedAt
                ).order_by(ChimpInspection.containerInspectionId)
            ).all()
        # announced by the code of their day: not owed a second results-ready
        assert rows == [(1, datetime.datetime(2026, 1, 2, 3, 4, 5)), (2, None)]
    finally:
        engine.dispose()
