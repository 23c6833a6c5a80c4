"""A facility's ISPyB for tests: the full schema, only the facility's lookup rows, our tables.

What a facility really has, unlike the core subset the other worlds use: every table of the
facility's own ORM (``ispyb.sqlalchemy``, ~200 tables) with every foreign key, among them the
ones INTO ``BLSubSample`` (``ContainerQueueSample`` ON DELETE CASCADE, ``DataCollection`` and
others RESTRICT) and ``Proposal.personId``, ``Container.priorityPipelineId`` (default 6) and
friends. Its lookups are the facility's: schemas MARCO (1) and CHIMP (2) with classes 1-8,
the inspection and container types, the processing pipelines; nothing of ours. The worker's
``chimp_*`` tables come from ``chimp-worker db upgrade``, as docs/facility.md tells a facility
(it detects the existing ISPyB and creates only those), and the BASELINE_CV schema the tests'
analyser writes under from the statements ``chimp-worker db score-schema`` prints, run as the
ISPyB administrators would.

Creating 200 InnoDB tables takes seconds to tens of seconds on a busy machine, so databases
are pooled for the test session: a lease empties every table and restores the lookups
(~0.2 s) instead of building anew.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ispyb.sqlalchemy import Base as FacilityBase
from sqlalchemy import Connection, column, table

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.ispyb import schema, score_schema
from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.seed import CONTAINER_TYPES, INSPECTION_TYPES
from chimp_worker.ispyb.worker_tables import WorkerBase

MARIADB_HOST = os.environ.get("CHIMP_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("CHIMP_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("CHIMP_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("CHIMP_TEST_MARIADB_PASSWORD", "")

# The facility's own lookup rows (ISPyB's schemas/ispyb/lookups.sql), nothing else.
SCORE_SCHEMAS = (
    {"blSampleImageAutoScoreSchemaId": 1, "schemaName": "MARCO", "enabled": 1},
    {"blSampleImageAutoScoreSchemaId": 2, "schemaName": "CHIMP", "enabled": 1},
)
SCORE_CLASSES = tuple(
    {
        "blSampleImageAutoScoreClassId": class_id,
        "blSampleImageAutoScoreSchemaId": 1 if class_id <= 4 else 2,
        "scoreClass": name,
    }
    for class_id, name in enumerate(("clear", "crystal", "precipitant", "other") * 2, start=1)
)
PIPELINE_CATEGORIES = (
    {"processingPipelineCategoryId": 1, "name": "screening"},
    {"processingPipelineCategoryId": 2, "name": "processing"},
    {"processingPipelineCategoryId": 3, "name": "post processing"},
)
_PIPELINES = (
    (1, 1, "Mosflm", "automatic", 0),
    (2, 1, "EDNA", "automatic", 0),
    (3, 2, "Fast DP", "automatic", 1),
    (4, 2, "xia2/XDS", "deprecated", 0),
    (5, 2, "xia2/Multiplex", "automatic", 1),
    (6, 2, "xia2/DIALS", "optional", 1),  # Container.priorityPipelineId's default
    (7, 2, "xia2/3dii", "optional", 1),
    (8, 2, "autoPROC", "optional", 1),
    (9, 3, "Fast EP", "automatic", 0),
    (10, 3, "Dimple", "automatic", 0),
    (11, 3, "MrBUMP", "automatic", 0),
    (12, 3, "Big EP/XDS", "automatic", 0),
    (13, 3, "Big EP/DIALS", "automatic", 0),
    (14, 2, "autoPROC+STARANISO", "automatic", 0),
    (15, 2, "xia2/DIALS (multi)", "automatic", 0),
    (16, 2, "xia2/3dii (multi)", "automatic", 0),
)
PIPELINES = tuple(
    {
        "processingPipelineId": pipeline_id,
        "processingPipelineCategoryId": category,
        "name": name,
        "discipline": "MX",
        "pipelineStatus": status,
        "reprocessing": reprocessing,
    }
    for pipeline_id, category, name, status, reprocessing in _PIPELINES
)
LOOKUPS: tuple[tuple[str, Sequence[dict[str, object]]], ...] = (
    ("InspectionType", [dict(row) for row in INSPECTION_TYPES]),
    ("ContainerType", [dict(row) for row in CONTAINER_TYPES]),
    ("ProcessingPipelineCategory", list(PIPELINE_CATEGORIES)),
    ("ProcessingPipeline", list(PIPELINES)),
    ("BLSampleImageAutoScoreSchema", list(SCORE_SCHEMAS)),
    ("BLSampleImageAutoScoreClass", list(SCORE_CLASSES)),
)
VERSION_TABLES = {history.version_table for history in schema.HISTORIES.values()}


def url_for(database: str) -> str:
    password = f":{MARIADB_PASSWORD}" if MARIADB_PASSWORD else ""
    return (
        f"mysql+mysqldb://{MARIADB_USER}{password}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"
        "?charset=utf8mb4"
    )


def _admin():  # type: ignore[no-untyped-def]
    import MySQLdb

    return MySQLdb.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, passwd=MARIADB_PASSWORD
    )


def _insert_lookups(connection: Connection) -> None:
    for name, rows in LOOKUPS:
        target = table(name, *(column(key) for key in rows[0]))
        connection.execute(target.insert(), rows)


def add_score_schemas(connection: Connection, names: Sequence[str]) -> None:
    """What the ISPyB administrators do with ``chimp-worker db score-schema``'s output."""
    for name in names:
        for statement in score_schema.check(connection, name).statements:
            connection.exec_driver_sql(statement)


def build_facility(database: str) -> str:
    """Create the database: facility schema and lookups, then ``db upgrade`` for our tables."""
    admin = _admin()
    try:
        admin.cursor().execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    finally:
        admin.close()
    url = url_for(database)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            schema._create_tables_with_inline_indexes(connection, FacilityBase.metadata)
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
            _insert_lookups(connection)
    finally:
        engine.dispose()
    report = schema.upgrade(url)  # exactly `chimp-worker db upgrade`
    assert report.kind == "ispyb", report
    assert report.after["core"] is None, "db upgrade created core tables in a facility ISPyB"
    return url


def reset_facility(url: str, score_schemas: Sequence[str] = (BASELINE_SCHEMA,)) -> None:
    """Every row gone but the lookups (restored as the facility has them) and versions."""
    tables = [
        *FacilityBase.metadata.tables,
        *(name for name in WorkerBase.metadata.tables),
    ]
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for name in tables:
                if name not in VERSION_TABLES:
                    connection.exec_driver_sql(f"DELETE FROM `{name}`")
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
            _insert_lookups(connection)
            add_score_schemas(connection, score_schemas)
    finally:
        engine.dispose()


class FacilityPool:
    """Facility databases for one test session: built on demand, reset on every lease."""

    def __init__(self) -> None:
        self._free: list[str] = []
        self._databases: list[str] = []

    @contextmanager
    def lease(self, score_schemas: Sequence[str] = (BASELINE_SCHEMA,)) -> Iterator[str]:
        if self._free:
            url = self._free.pop()
        else:
            database = f"chimp_facility_{uuid.uuid4().hex[:10]}"
            self._databases.append(database)
            url = build_facility(database)
        reset_facility(url, score_schemas)
        try:
            yield url
        finally:
            self._free.append(url)

    def close(self) -> None:
        admin = _admin()
        try:
            for database in self._databases:
                admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            admin.close()
