"""Alembic: two histories, detection of an existing ISPyB, idempotence, and models == migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result
from sqlalchemy import Connection, inspect, select, text

from chimp_worker.cli import cli
from chimp_worker.errors import DatabaseSchemaError
from chimp_worker.ispyb import schema
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.worker_tables import WorkerBase

WORKER_TABLES = set(WorkerBase.metadata.tables)
CORE_TABLES = set(t.Base.metadata.tables)


def differences(connection: Connection) -> dict[str, list[Any]]:
    """Autogenerate's view of models vs database, per history (empty lists: they agree)."""
    found = {}
    for name, history in schema.HISTORIES.items():
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": history.version_table,
                "include_name": schema._include_name_for(history),
            },
        )
        found[name] = compare_metadata(context, history.metadata)
    return found


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_everything_then_is_a_no_op(database_url: str) -> None:
    first = schema.upgrade(database_url)
    assert first.kind == "empty"
    assert first.before == {"core": None, "worker": None}
    assert first.after == schema.head_revisions()
    assert table_names(database_url) >= CORE_TABLES | WORKER_TABLES

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert differences(connection) == {"core": [], "worker": []}
            chimp_class = connection.scalar(
                select(t.BLSampleImageAutoScoreClass.scoreClass).where(
                    t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId == 6
                )
            )
            assert chimp_class == "crystal"
        second = schema.upgrade(database_url)
        assert second.kind == "development"
        assert not second.changed
        with engine.connect() as connection:
            assert connection.scalar(select(t.ContainerType.containerTypeId).limit(1)) == 14
            assert len(connection.execute(select(t.ContainerType)).all()) == 3  # not re-seeded
    finally:
        engine.dispose()


def test_create_all_matches_the_migrations(database_url: str) -> None:
    schema.create_all(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert differences(connection) == {"core": [], "worker": []}
            assert schema.current_revisions(connection) == schema.head_revisions()
    finally:
        engine.dispose()
    assert not schema.upgrade(database_url).changed


def reflected(url: str) -> dict[str, Any]:
    """Columns, indexes and foreign keys of every table, as plain comparable data."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return {
            name: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
                sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)),
                sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"])
                    for f in inspector.get_foreign_keys(name)
                ),
            )
            for name in inspector.get_table_names()
        }
    finally:
        engine.dispose()


def test_create_all_and_upgrade_reflect_identically_on_sqlite(tmp_path: Path) -> None:
    migrated, created = f"sqlite:///{tmp_path / 'a.sqlite'}", f"sqlite:///{tmp_path / 'b.sqlite'}"
    schema.upgrade(migrated, "all")
    schema.create_all(created)
    assert reflected(migrated) == reflected(created)


def test_existing_ispyb_gets_only_the_worker_tables(database_url: str) -> None:
    engine = make_engine(database_url, create=True)
    with engine.begin() as connection:  # a facility database: core tables, none of ours
        if connection.dialect.name == "mysql":
            schema._create_tables_with_inline_indexes(connection, t.Base.metadata)  # faster
        else:
            t.Base.metadata.create_all(connection)
    engine.dispose()

    with pytest.raises(DatabaseSchemaError, match="existing ISPyB"):
        schema.upgrade(database_url, "all")
    with pytest.raises(DatabaseSchemaError, match="existing ISPyB"):
        schema.upgrade(database_url, "core")
    report = schema.upgrade(database_url)
    assert report.kind == "ispyb"
    assert report.after == {"core": None, "worker": schema.head_revisions()["worker"]}
    names = table_names(database_url)
    assert names >= WORKER_TABLES
    assert schema.HISTORIES["core"].version_table not in names
    assert not schema.upgrade(database_url, "worker").changed


def test_partial_ispyb_is_refused(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, create=True)
    t.Base.metadata.create_all(engine, tables=[t.Position.__table__])
    engine.dispose()
    with pytest.raises(DatabaseSchemaError, match="neither empty nor a usable ISPyB"):
        schema.upgrade(sqlite_url)


def test_upgrade_sql_prints_ddl_without_running_it(sqlite_url: str) -> None:
    ddl = schema.upgrade_sql(sqlite_url, "worker")
    assert "CREATE TABLE chimp_image_result" in ddl
    assert "CREATE TABLE BLSampleImage" not in ddl
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists(), "no database file made"


def run_cli(*args: str, database_url: str) -> Result:
    """In-process (a subprocess per call costs seconds on a shared machine)."""
    return CliRunner().invoke(cli, ["--database-url", database_url, *args])


def test_db_commands(sqlite_url: str) -> None:
    heads = schema.head_revisions()
    first = run_cli("db", "upgrade", database_url=sqlite_url)
    assert first.exit_code == 0, first.output
    assert f"core    empty -> {heads['core']}" in first.output
    assert f"worker  empty -> {heads['worker']}" in first.output
    again = run_cli("db", "upgrade", database_url=sqlite_url)
    assert "nothing to do" in again.output
    current = run_cli("db", "current", database_url=sqlite_url)
    assert "(development)" in current.output
    assert current.output.count("up to date") == 2
    refused = run_cli("db", "upgrade", "--target", "nonsense", database_url=sqlite_url)
    assert refused.exit_code == 2
    assert "nonsense" in refused.output


def test_worker_0003_backfills_the_rows_earlier_versions_wrote(database_url: str) -> None:
    """Rows written before chimp_ispyb_row existed are the worker's again after the upgrade, with
    the coordinates it computed: a dispense point staff moved meanwhile is staff's."""
    from helpers.ispyb_rows import add_plate, make_analysis

    from chimp_worker.ispyb.database import make_session_factory
    from chimp_worker.ispyb.worker_tables import ChimpIspybRow
    from chimp_worker.ispyb.writer import write_image_result

    engine = make_engine(database_url, create=True)
    try:
        with engine.begin() as connection:
            command.upgrade(schema.alembic_config("core", connection), "head")
            command.upgrade(schema.alembic_config("worker", connection), "worker_0002")
        factory = make_session_factory(engine)
        plate = add_plate(factory, drops=1)
        image, sample = plate.imageIds[0], plate.sampleIds[0]
        with engine.begin() as connection:  # what worker_0002's writer left behind
            position = connection.execute(
                text("INSERT INTO Position (posX, posY) VALUES (100, 40)")
            ).lastrowid
            subsample = connection.execute(
                text(
                    "INSERT INTO BLSubSample (blSampleId, blSampleImageId, positionId, source,"
                    " type) VALUES (:sample, :image, :position, 'auto', 'poi')"
                ),
                {"sample": sample, "image": image, "position": position},
            ).lastrowid
            dispense = connection.execute(
                text(
                    "INSERT INTO BLSamplePosition (blSampleId, posX, posY, positionType)"
                    " VALUES (:sample, 65, 118, 'dispensing')"  # staff moved it from (60, 120)
                ),
                {"sample": sample},
            ).lastrowid
            connection.execute(
                text(
                    "INSERT INTO chimp_image_result (blSampleImageId, state, analyser,"
                    " dispenseX, dispenseY, blSamplePositionId, attempts, createdAt, updatedAt)"
                    " VALUES (:image, 'done', 'chimp', 60, 120, :dispense, 1,"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                ),
                {"image": image, "dispense": dispense},
            )
            connection.execute(
                text(
                    "INSERT INTO chimp_detection (blSampleImageId, detectionIndex, label, score,"
                    " boxX0, boxY0, boxX1, boxY1, maskArea, blSubSampleId)"
                    " VALUES (:image, 0, 'crystal', 0.875, 0, 0, 1, 1, 1, :subsample)"
                ),
                {"image": image, "subsample": subsample},
            )
        upgraded = schema.upgrade(database_url, "worker")
        assert upgraded.after["worker"] == schema.head_revisions()["worker"]
        with factory() as session:
            rows = {
                (row.tableName, row.rowId): (row.analyser, row.posX, row.posY, row.score)
                for row in session.scalars(select(ChimpIspybRow))
            }
        assert rows == {
            ("BLSubSample", subsample): ("chimp", 100.0, 40.0, 0.875),
            ("BLSamplePosition", dispense): ("chimp", 60.0, 120.0, None),
        }
        # The next result replaces the worker's free point and leaves staff's dispense point.
        outcome = write_image_result(
            factory, image, make_analysis(targets=[(7, 7)], dispense=(90, 90))
        )
        assert outcome.dispense_held_by == "staff"
        with engine.connect() as connection:
            points = connection.execute(
                text(
                    "SELECT p.posX, p.posY FROM BLSubSample ss"
                    " JOIN Position p ON p.positionId = ss.positionId"
                    " WHERE ss.blSampleImageId = :image"
                ),
                {"image": image},
            ).all()
        assert [tuple(point) for point in points] == [(7.0, 7.0)]
    finally:
        engine.dispose()
