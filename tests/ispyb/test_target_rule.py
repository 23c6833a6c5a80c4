"""The target rule is stored with every result, is part of its digest, makes results stale,
and the worker_0004 migration marks results stored before it as 'original'."""

from __future__ import annotations

import dataclasses

from alembic import command
from alembic.script import ScriptDirectory
from helpers.ispyb_rows import Plate, make_analysis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import TargetRule
from chimp_worker.ispyb import schema
from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.progress import images_needing_work
from chimp_worker.ispyb.worker_tables import ChimpImageResult
from chimp_worker.ispyb.writer import result_digest, write_image_result


def stored_rule(factory: sessionmaker[Session], image_id: int) -> str | None:
    with factory() as session:
        return session.scalar(
            select(ChimpImageResult.targetRule).where(ChimpImageResult.blSampleImageId == image_id)
        )


def with_rule(rule: str | None):  # type: ignore[no-untyped-def]
    return dataclasses.replace(make_analysis(), target_rule=rule)


def test_the_rule_is_stored_and_part_of_the_digest(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    image_id = plate.imageIds[0]
    assert result_digest(with_rule("published")) != result_digest(with_rule("original"))
    assert write_image_result(factory, image_id, with_rule("original")).changed
    assert stored_rule(factory, image_id) == "original"
    # The same detections, targets and dispense point by the published rule: rewritten.
    assert write_image_result(factory, image_id, with_rule("published")).changed
    assert stored_rule(factory, image_id) == "published"
    assert not write_image_result(factory, image_id, with_rule("published")).changed


def test_results_by_another_rule_need_work(factory: sessionmaker[Session], plate: Plate) -> None:
    a, b, c, d = plate.imageIds
    write_image_result(factory, a, with_rule("published"))
    write_image_result(factory, b, with_rule("original"))
    write_image_result(factory, c, with_rule(None))  # stored before results named a rule
    published, original = str(TargetRule.PUBLISHED), str(TargetRule.ORIGINAL)
    assert images_needing_work(factory, plate.inspectionId, target_rule=published) == [b, c, d]
    assert images_needing_work(factory, plate.inspectionId, target_rule=original) == [a, c, d]
    # No rule given (an analyser without one): only unprocessed images.
    assert images_needing_work(factory, plate.inspectionId) == [d]


def test_the_migration_adds_the_rule_and_marks_earlier_results_original(
    database_url: str,
) -> None:
    config = schema.alembic_config("worker")
    previous = ScriptDirectory.from_config(config).get_revision("worker_0004").down_revision
    engine = make_engine(database_url, create=True)  # the test builds the earlier schema itself
    try:
        with engine.begin() as connection:
            command.upgrade(schema.alembic_config("core", connection), "head")
            command.upgrade(schema.alembic_config("worker", connection), str(previous))
            connection.exec_driver_sql(
                "INSERT INTO chimp_image_result (blSampleImageId, state, attempts, createdAt, "
                "updatedAt) VALUES (1, 'done', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00'), "
                "(2, 'failed', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00'), "
                "(3, 'pending', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        report = schema.upgrade(database_url, "worker")
        assert report.after["worker"] == schema.head_revisions()["worker"]
        with engine.connect() as connection:
            rows = connection.execute(
                select(ChimpImageResult.blSampleImageId, ChimpImageResult.targetRule).order_by(
                    ChimpImageResult.blSampleImageId
                )
            ).all()
        assert rows == [(1, "original"), (2, None), (3, None)]
    finally:
        engine.dispose()
