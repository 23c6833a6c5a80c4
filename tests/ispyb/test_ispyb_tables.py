"""The core and worker tables create and seed on both backends, with SQLite FKs enforced."""

from __future__ import annotations

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from chimp_worker.analysis import BASELINE_SCHEMA, CHIMP_SCHEMA
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.seed import seed_core
from chimp_worker.ispyb.worker_tables import WorkerBase


def test_schema_creates_and_seeds(dev_ispyb_url: str) -> None:
    engine = make_engine(dev_ispyb_url)
    names = set(inspect(engine).get_table_names())
    assert set(t.Base.metadata.tables) | set(WorkerBase.metadata.tables) <= names
    with make_session_factory(engine)() as session:
        classes = session.execute(
            select(
                t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId,
                t.BLSampleImageAutoScoreClass.scoreClass,
                t.BLSampleImageAutoScoreSchema.schemaName,
            )
            .join(
                t.BLSampleImageAutoScoreSchema,
                t.BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId
                == t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreSchemaId,
            )
            .order_by(t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId)
        ).all()
        inspection_types = session.execute(
            select(t.InspectionType.inspectionTypeId, t.InspectionType.name)
        ).all()
        swissci = session.scalars(
            select(t.ContainerType).where(t.ContainerType.name == "SWISSCI 3 Drop")
        ).one()
    engine.dispose()
    chimp = [(cid, name) for cid, name, schema in classes if schema == CHIMP_SCHEMA]
    assert chimp == [(5, "clear"), (6, "crystal"), (7, "precipitant"), (8, "other")]
    assert {schema for _, _, schema in classes} == {"MARCO", CHIMP_SCHEMA, BASELINE_SCHEMA}
    assert sorted(inspection_types) == [(1, "Visible"), (2, "UV")]
    assert (swissci.wellPerRow, swissci.dropPerWellX, swissci.dropPerWellY) == (12, 2, 2)
    assert (swissci.containerTypeId, swissci.wellDrop, swissci.capacity) == (23, 1, 288)


def test_seed_is_idempotent(ispyb_sqlite_url: str) -> None:
    engine = make_engine(ispyb_sqlite_url)
    with engine.begin() as connection:
        assert seed_core(connection) == 0
        assert connection.scalar(select(func.count()).select_from(t.ContainerType)) == 3
    engine.dispose()


def test_sqlite_enforces_foreign_keys(ispyb_sqlite_url: str) -> None:
    engine = make_engine(ispyb_sqlite_url)
    factory = make_session_factory(engine)
    with pytest.raises(IntegrityError), factory.begin() as session:
        session.add(t.BLSampleImage(blSampleId=999_999, imageFullPath="/nowhere.jpg"))
    engine.dispose()


def test_position_generated_columns_follow_pos(database_url: str) -> None:
    """X/Y/Z are generated (never written): reading them back mirrors posX/posY/posZ."""
    engine = make_engine(database_url, create=True)
    t.Base.metadata.create_all(engine, tables=[t.Position.__table__])
    factory = make_session_factory(engine)
    with factory.begin() as session:
        position = t.Position(posX=120.0, posY=45.0)
        session.add(position)
    with factory() as session:
        row = session.get(t.Position, position.positionId)
        assert row is not None
        assert (row.X, row.Y, row.Z) == (120.0, 45.0, None)
    engine.dispose()
