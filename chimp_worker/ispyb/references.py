"""What points at an auto BLSubSample in a facility's ISPyB, and so must never be deleted.

Staff act on the worker's crystal targets: they queue them for data collection, collect on
them, measure them. In the facility schema those rows hold foreign keys INTO ``BLSubSample``:
``ContainerQueueSample`` with ON DELETE CASCADE (deleting a queued point silently unqueues it),
the others RESTRICT (deleting fails with MariaDB error 1451). Re-processing therefore asks,
before deleting an auto sub-sample, whether anything references it, and keeps it if so.

The development schema (the ``core`` history) has none of these tables; which ones exist and
are readable is probed once per engine. A table the worker may not read (no SELECT grant) makes
every check impossible: the writer then keeps all rows, and start-up refuses (``preflight``)
with the GRANT statements to ask for.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, exc, text
from sqlalchemy.orm import Session

from chimp_worker.ispyb.database import describe, is_transient, translate_db_errors


@dataclass(frozen=True)
class Reference:
    """A column that points at ``BLSubSample.blSubSampleId``, and what it means to staff."""

    table: str
    column: str
    reason: str  # shown as "kept: <reason>"


# In order of precedence: a point both queued and collected is shown as queued.
SUBSAMPLE_REFERENCES: tuple[Reference, ...] = (
    Reference("ContainerQueueSample", "blSubSampleId", "queued by staff"),
    Reference("DataCollection", "blSubSampleId", "data collected"),
    Reference("BLSampleImageMeasurement", "blSubSampleId", "measured"),
    Reference("EnergyScan", "blSubSampleId", "energy scan"),
    Reference("XFEFluorescenceSpectrum", "blSubSampleId", "fluorescence spectrum"),
    Reference("BLSubSample_has_Positioner", "blSubSampleId", "positioner"),
    Reference("BLSample", "blSubSampleId", "a sample refers to it"),
)

MISSING_MYSQL_CODES = (1146, 1054)  # no such table, no such column (an older schema)
DENIED_MYSQL_CODES = (1142, 1143)  # table or column privilege missing
_IN_CHUNK = 500


@dataclass(frozen=True)
class ReferenceTables:
    """Which referencing tables this database has and the worker may read."""

    readable: tuple[Reference, ...]
    denied: tuple[Reference, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every existing reference can be checked."""
        return not self.denied

    def grants(self, user: str = "'chimp_worker'@'%'", schema: str = "`ispyb`") -> list[str]:
        """The GRANT statements that would make every check possible."""
        return [
            f"GRANT SELECT (`{reference.column}`) ON {schema}.`{reference.table}` TO {user};"
            for reference in self.denied
        ]


_probed: weakref.WeakKeyDictionary[Engine, ReferenceTables] = weakref.WeakKeyDictionary()


def _outcome(engine: Engine, reference: Reference) -> str:
    """'readable', 'missing' or 'denied' for one referencing column."""
    query = text(f"SELECT {reference.column} FROM {reference.table} WHERE 1 = 0")
    try:
        with translate_db_errors(), engine.connect() as connection:
            connection.execute(query).all()
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        if is_transient(error):
            raise
        original = getattr(error, "orig", None) or error
        code = original.args[0] if original.args and isinstance(original.args[0], int) else None
        if code in DENIED_MYSQL_CODES:
            return "denied"
        if code in MISSING_MYSQL_CODES or "no such" in str(original).lower():
            return "missing"
        raise RuntimeError(f"probing {reference.table}: {describe(error)}") from error
    return "readable"


def reference_tables(engine: Engine) -> ReferenceTables:
    """Probe (once per engine) which referencing tables exist and are readable."""
    found = _probed.get(engine)
    if found is None:
        outcomes = {reference: _outcome(engine, reference) for reference in SUBSAMPLE_REFERENCES}
        found = ReferenceTables(
            readable=tuple(r for r, outcome in outcomes.items() if outcome == "readable"),
            denied=tuple(r for r, outcome in outcomes.items() if outcome == "denied"),
        )
        _probed[engine] = found
    return found


def referenced_subsamples(
    session: Session, tables: ReferenceTables, subsample_ids: Iterable[int]
) -> dict[int, str]:
    """blSubSampleId -> why it must be kept, for the ids that something references.

    When a referencing table cannot be read, every id is reported as kept: a row the worker
    cannot check is a row it must not delete.
    """
    ids = sorted(set(subsample_ids))
    if not ids:
        return {}
    if tables.denied:
        names = ", ".join(reference.table for reference in tables.denied)
        return dict.fromkeys(ids, f"references not readable (no SELECT on {names})")
    kept: dict[int, str] = {}
    for reference in tables.readable:
        for found in _referencing(session, reference, ids):
            kept.setdefault(found, reference.reason)
    return kept


def _referencing(session: Session, reference: Reference, ids: Sequence[int]) -> set[int]:
    statement = text(
        f"SELECT DISTINCT {reference.column} FROM {reference.table} "
        f"WHERE {reference.column} IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    found: set[int] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = list(ids[start : start + _IN_CHUNK])
        found.update(int(row[0]) for row in session.execute(statement, {"ids": chunk}))
    return found


def forget(engine: Engine) -> None:
    """Drop the cached probe of an engine (tests that change grants or tables)."""
    _probed.pop(engine, None)
