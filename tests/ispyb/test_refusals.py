"""A write the database refuses is one failed image with a specific reason, never a crash or a
redelivery loop; a reference the worker does not know about keeps its row, nothing fails."""

from __future__ import annotations

import pytest
from helpers.ispyb_rows import Plate, add_plate, make_analysis, snapshot
from helpers.orphans import orphan_sample
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import DatabaseRefusedError, PermanentError
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.writer import write_image_result


def test_a_refused_write_is_a_permanent_error_with_its_reason_and_writes_nothing(
    ispyb_url: str, factory: sessionmaker[Session], plate: Plate
) -> None:
    orphan_sample(ispyb_url, plate.sampleIds[0])
    before = snapshot(factory)
    with pytest.raises(DatabaseRefusedError) as refused:
        write_image_result(factory, plate.imageIds[0], make_analysis())
    assert isinstance(refused.value, PermanentError)
    assert refused.value.reason == "db_refused_foreign_key"
    assert "1452" in str(refused.value) or "FOREIGN KEY constraint failed" in str(refused.value)
    assert snapshot(factory) == before  # rolled back whole: no half-written result
    # The other drops are untouched by it and still write.
    assert write_image_result(factory, plate.imageIds[1], make_analysis()).changed


def test_an_unknown_restricting_reference_keeps_its_row_and_the_write_goes_on(
    facility_url: str,
) -> None:
    """A facility's own table pointing at BLSubSample (RESTRICT): MariaDB refuses the delete
    (1451); the worker keeps that point with the database's reason and writes the rest."""
    engine = make_engine(facility_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory)
    image = plate.imageIds[0]
    harvested, free = write_image_result(
        factory, image, make_analysis(targets=[(100, 40), (30, 200)])
    ).blSubSampleIds
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE local_harvest (harvestId INT AUTO_INCREMENT PRIMARY KEY, "
            "blSubSampleId INT NOT NULL, "
            "FOREIGN KEY (blSubSampleId) REFERENCES BLSubSample (blSubSampleId))"
        )
        connection.execute(
            text("INSERT INTO local_harvest (blSubSampleId) VALUES (:id)"), {"id": harvested}
        )
    try:
        outcome = write_image_result(factory, image, make_analysis(targets=[(250, 20)]))
        assert set(outcome.kept) == {harvested}
        assert outcome.kept[harvested].startswith("referenced: MariaDB error 1451")
        with factory() as session:
            left = (
                session.execute(
                    text("SELECT blSubSampleId FROM BLSubSample WHERE blSampleImageId = :i"),
                    {"i": image},
                )
                .scalars()
                .all()
            )
        assert harvested in left
        assert free not in left
        assert len(left) == 2
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE local_harvest")
        engine.dispose()
