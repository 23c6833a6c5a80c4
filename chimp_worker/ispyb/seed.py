"""Lookup rows a development, test or embedded database needs before the first plate.

A real ISPyB already has these (the facility seeded MARCO and CHIMP); the ``core`` migration
and ``schema.create_all`` insert them here. Written against lightweight ``table()`` clauses,
not the ORM classes, so the migration that calls it keeps working as the models evolve.
Idempotent: rows whose key already exists are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, column, select, table

from chimp_worker.analysis import BASELINE_SCHEMA, CHIMP_SCHEMA

MARCO_SCHEMA = "MARCO"

INSPECTION_TYPES: Sequence[Mapping[str, Any]] = (
    {"inspectionTypeId": 1, "name": "Visible"},
    {"inspectionTypeId": 2, "name": "UV"},
)

AUTO_SCORE_SCHEMAS: Sequence[Mapping[str, Any]] = (
    {"blSampleImageAutoScoreSchemaId": 1, "schemaName": MARCO_SCHEMA, "enabled": 1},
    {"blSampleImageAutoScoreSchemaId": 2, "schemaName": CHIMP_SCHEMA, "enabled": 1},
    {"blSampleImageAutoScoreSchemaId": 3, "schemaName": BASELINE_SCHEMA, "enabled": 1},
)

# (class id, schema id, ISPyB score-class name); CHIMP's ids 5-8 are fixed by contract.
AUTO_SCORE_CLASSES: Sequence[tuple[int, int, str]] = (
    (1, 1, "clear"),
    (2, 1, "crystal"),
    (3, 1, "precipitant"),
    (4, 1, "other"),
    (5, 2, "clear"),
    (6, 2, "crystal"),
    (7, 2, "precipitant"),
    (8, 2, "other"),
    (9, 3, "clear"),
    (10, 3, "crystal"),
    (11, 3, "precipitant"),
    (12, 3, "other"),
)

# Plate geometries exactly as ISPyB's own ContainerType seed rows (same ids, so SynchWeb's
# plate drawings agree): 8 rows x wellPerRow wells, dropPerWellX x dropPerWellY drop cells per
# well; wellDrop is the 0-based, row-major cell taken by the reservoir, -1 for none.
_CONTAINER_TYPE_COLUMNS = (
    "containerTypeId",
    "name",
    "wellPerRow",
    "dropPerWellX",
    "dropPerWellY",
    "dropHeight",
    "dropWidth",
    "dropOffsetX",
    "dropOffsetY",
    "wellDrop",
    "capacity",
)
CONTAINER_TYPES: Sequence[Mapping[str, Any]] = tuple(
    {**dict(zip(_CONTAINER_TYPE_COLUMNS, row, strict=True)), "proposalType": "mx", "active": 1}
    for row in (
        (14, "CrystalQuickX", 12, 2, 1, 0.5, 1.0, 0.0, 0.0, -1, 192),
        (20, "MRC 2 Drop", 12, 1, 2, 1.0, 0.5, 0.5, 0.0, -1, 192),
        (23, "SWISSCI 3 Drop", 12, 2, 2, 1.0, 1.0, 0.0, 0.0, 1, 288),
    )
)

_inspection_type = table("InspectionType", column("inspectionTypeId"), column("name"))
_schema = table(
    "BLSampleImageAutoScoreSchema",
    column("blSampleImageAutoScoreSchemaId"),
    column("schemaName"),
    column("enabled"),
)
_score_class = table(
    "BLSampleImageAutoScoreClass",
    column("blSampleImageAutoScoreClassId"),
    column("blSampleImageAutoScoreSchemaId"),
    column("scoreClass"),
)
_container_type = table("ContainerType", *(column(name) for name in CONTAINER_TYPES[0]))


def seed_core(connection: Connection) -> int:
    """Insert the lookup rows that are missing; returns how many rows were inserted."""
    classes = [
        {
            "blSampleImageAutoScoreClassId": class_id,
            "blSampleImageAutoScoreSchemaId": schema_id,
            "scoreClass": name,
        }
        for class_id, schema_id, name in AUTO_SCORE_CLASSES
    ]
    inserted = 0
    inserted += _insert_missing(connection, _inspection_type, "inspectionTypeId", INSPECTION_TYPES)
    inserted += _insert_missing(
        connection, _schema, "blSampleImageAutoScoreSchemaId", AUTO_SCORE_SCHEMAS
    )
    inserted += _insert_missing(connection, _score_class, "blSampleImageAutoScoreClassId", classes)
    inserted += _insert_missing(connection, _container_type, "containerTypeId", CONTAINER_TYPES)
    return inserted


def _insert_missing(
    connection: Connection, target: Any, key: str, rows: Sequence[Mapping[str, Any]]
) -> int:
    present = set(connection.scalars(select(target.c[key])))
    missing = [dict(row) for row in rows if row[key] not in present]
    if missing:
        connection.execute(target.insert(), missing)
    return len(missing)
