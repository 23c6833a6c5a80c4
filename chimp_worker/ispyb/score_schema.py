"""The auto-score schema an analyser writes under: is it in ISPyB, and what to ask for if not.

ISPyB files class probabilities under a named schema (``BLSampleImageAutoScoreSchema``) with
one row per class (``BLSampleImageAutoScoreClass``). A facility's lookups hold only MARCO
(schema 1, classes 1-4) and CHIMP (schema 2, classes 5-8); any other schema, such as the
weight-free baseline's BASELINE_CV, must be added by the ISPyB administrators. A schema with
``enabled = 0`` is never written. SynchWeb's routes accept a single-digit schema id only, so a
new schema gets the lowest free id and an id above 9 is warned about.

``check`` finds what is missing and writes the exact SQL that adds it: ``chimp-worker db
score-schema`` prints it (and applies it on a development database), and start-up refuses with
it, so a worker never takes messages only to dead-letter every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, select

from chimp_worker.analysis import BASELINE_SCHEMA, CHIMP_SCHEMA, ISPYB_SCORE_CLASS
from chimp_worker.errors import DatabaseSchemaError, ScoreSchemaError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import translate_db_errors

if TYPE_CHECKING:
    from chimp_worker.config import Settings

# The classes every analyser writes, in the order ISPyB's CHIMP rows have them (5, 6, 7, 8).
REQUIRED_CLASSES: tuple[str, ...] = ("clear", "crystal", "precipitant", "other")
assert set(REQUIRED_CLASSES) == set(ISPYB_SCORE_CLASS.values())
SYNCHWEB_MAX_SCHEMA_ID = 9  # SynchWeb's routes take one digit
TINYINT_UNSIGNED_MAX = 255  # both ids are tinyint(3) unsigned


@dataclass(frozen=True)
class ScoreSchemaCheck:
    """What ISPyB has of one schema, and the statements that would make it writable."""

    schema_name: str
    schema_id: int | None  # None: no such schema (the id it would get is in the statements)
    enabled: bool | None
    class_ids: Mapping[str, int] = field(default_factory=dict)  # present classes
    statements: tuple[str, ...] = ()  # empty when ready
    warnings: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.statements

    def describe(self) -> str:
        """One line on what is wrong (or that nothing is)."""
        if self.schema_id is None:
            return f"ISPyB has no auto-score schema {self.schema_name!r}"
        if not self.enabled:
            return (
                f"auto-score schema {self.schema_name!r} (id {self.schema_id}) is disabled "
                "(enabled = 0) and is never written"
            )
        missing = [name for name in REQUIRED_CLASSES if name not in self.class_ids]
        if missing:
            return (
                f"auto-score schema {self.schema_name!r} (id {self.schema_id}) lacks the "
                f"classes {', '.join(missing)}"
            )
        classes = ", ".join(f"{name} {self.class_ids[name]}" for name in REQUIRED_CLASSES)
        return f"auto-score schema {self.schema_name!r} (id {self.schema_id}) is ready: {classes}"

    def sql(self) -> str:
        """The statements as a script for the ISPyB administrators (warnings as comments)."""
        lines = [f"-- {self.describe()}"]
        lines += [f"-- warning: {warning}" for warning in self.warnings]
        lines += list(self.statements)
        return "\n".join(lines) + "\n"


def analyser_schema(settings: Settings) -> str:
    """The schema the configured analyser writes under, without loading any model."""
    return CHIMP_SCHEMA if settings.effective_analyser == "chimp" else BASELINE_SCHEMA


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _free_ids(used: set[int], count: int, *, above: int = 0) -> list[int]:
    """``count`` unused ids, preferring those above ``above``, within tinyint unsigned."""
    preferred = [i for i in range(above + 1, TINYINT_UNSIGNED_MAX + 1) if i not in used]
    fallback = [i for i in range(1, above + 1) if i not in used]
    free = (preferred + fallback)[:count]
    if len(free) < count:
        raise DatabaseSchemaError(
            f"no free ids left in the auto-score tables (tinyint, 1..{TINYINT_UNSIGNED_MAX})"
        )
    return free


def check(connection: Connection, schema_name: str) -> ScoreSchemaCheck:
    """What ISPyB has of ``schema_name`` and the SQL that would make it writable."""
    schemas = connection.execute(
        select(
            t.BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId,
            t.BLSampleImageAutoScoreSchema.schemaName,
            t.BLSampleImageAutoScoreSchema.enabled,
        ).order_by(t.BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId)
    ).all()
    classes = connection.execute(
        select(
            t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId,
            t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreSchemaId,
            t.BLSampleImageAutoScoreClass.scoreClass,
        )
    ).all()
    used_classes = {int(row[0]) for row in classes}
    found = next((row for row in schemas if row[1] == schema_name), None)
    statements: list[str] = []
    if found is None:
        schema_id = _free_ids({int(row[0]) for row in schemas}, 1)[0]
        statements.append(
            "INSERT INTO BLSampleImageAutoScoreSchema "
            "(blSampleImageAutoScoreSchemaId, schemaName, enabled) "
            f"VALUES ({schema_id}, {_quote(schema_name)}, 1);"
        )
        statements += _class_inserts(schema_id, REQUIRED_CLASSES, used_classes)
        return ScoreSchemaCheck(
            schema_name, None, None, {}, tuple(statements), _warnings(schema_name, schema_id)
        )
    schema_id, enabled = int(found[0]), found[2] != 0
    present = {row[2]: int(row[0]) for row in classes if row[1] == schema_id}
    if not enabled:
        statements.append(
            "UPDATE BLSampleImageAutoScoreSchema SET enabled = 1 "
            f"WHERE blSampleImageAutoScoreSchemaId = {schema_id};"
        )
    missing = [name for name in REQUIRED_CLASSES if name not in present]
    statements += _class_inserts(schema_id, missing, used_classes)
    return ScoreSchemaCheck(
        schema_name,
        schema_id,
        enabled,
        present,
        tuple(statements),
        _warnings(schema_name, schema_id),
    )


def _class_inserts(schema_id: int, names: Sequence[str], used: set[int]) -> list[str]:
    if not names:
        return []
    ids = _free_ids(used, len(names), above=max(used, default=0))
    pairs = zip(ids, names, strict=True)
    values = ", ".join(f"({class_id}, {schema_id}, {_quote(name)})" for class_id, name in pairs)
    return [
        "INSERT INTO BLSampleImageAutoScoreClass "
        "(blSampleImageAutoScoreClassId, blSampleImageAutoScoreSchemaId, scoreClass) "
        f"VALUES {values};"
    ]


def _warnings(schema_name: str, schema_id: int) -> tuple[str, ...]:
    if schema_id <= SYNCHWEB_MAX_SCHEMA_ID:
        return ()
    return (
        f"schema {schema_name!r} has id {schema_id}: SynchWeb's routes accept a single-digit "
        "schema id, so staff may not be able to pick it there",
    )


def require(engine: Engine, schema_name: str, *, analyser: str | None = None) -> ScoreSchemaCheck:
    """Start-up: raise ``ScoreSchemaError`` (exit 2) with the SQL unless the schema is ready."""
    with translate_db_errors(), engine.connect() as connection:
        found = check(connection, schema_name)
    if found.ready:
        return found
    who = f"the {analyser} analyser" if analyser else "the configured analyser"
    raise ScoreSchemaError(
        f"{found.describe()}, which {who} writes under. Hand these statements to the ISPyB "
        "administrators (on a development database: chimp-worker db score-schema --apply):\n"
        + "\n".join(f"  {statement}" for statement in found.statements)
    )


def apply(engine: Engine, schema_name: str) -> tuple[ScoreSchemaCheck, ScoreSchemaCheck]:
    """Run the statements ``check`` prints, on a development database only: (before, after)."""
    from chimp_worker.ispyb.schema import detect_kind

    with translate_db_errors(), engine.begin() as connection:
        kind = detect_kind(connection)
        before = check(connection, schema_name)
        if before.ready:
            return before, before
        if kind == "ispyb":
            raise DatabaseSchemaError(
                "this is a facility's ISPyB, whose lookups belong to its administrators: hand "
                "them the statements 'chimp-worker db score-schema' prints"
            )
        for statement in before.statements:
            connection.exec_driver_sql(statement)
        return before, check(connection, schema_name)
