"""Our core tables against the facility's own ORM (``ispyb.sqlalchemy``), table by table.

Same column names (in the same order), nullability, primary keys and MariaDB types; UNSIGNED is
the one thing the facility ORM does not record, so it is compared modulo UNSIGNED here and
checked on its own below (InnoDB refuses a foreign key between signed and unsigned columns).
"""

from __future__ import annotations

import pytest
from ispyb.sqlalchemy import Base as FacilityBase
from sqlalchemy import Column, Table
from sqlalchemy.dialects import mysql

from chimp_worker.ispyb.tables import Base

DIALECT = mysql.dialect()
OURS = sorted(Base.metadata.tables.values(), key=lambda table: table.name)
RENAMED_INDEXES = {("BLSample", "BLSample_blSubSampleId_idx"): "BLSampleImage_idx1"}
DROPPED_DEFAULTS = {("Container", "source"), ("BLSample", "source")}  # current_user()


def mariadb_type(column: Column[object]) -> str:
    return column.type.compile(dialect=DIALECT)


def facility(table: Table) -> Table:
    return FacilityBase.metadata.tables[table.name]


@pytest.mark.parametrize("table", OURS, ids=lambda table: table.name)
def test_columns_match_the_facility_orm(table: Table) -> None:
    theirs = facility(table)
    assert [c.name for c in table.columns] == [c.name for c in theirs.columns]
    for ours_column in table.columns:
        their_column = theirs.columns[ours_column.name]
        where = f"{table.name}.{ours_column.name}"
        assert ours_column.nullable == their_column.nullable, where
        assert ours_column.primary_key == their_column.primary_key, where
        assert mariadb_type(ours_column).replace(" UNSIGNED", "") == mariadb_type(their_column), (
            where
        )
        assert (ours_column.computed is None) == (their_column.computed is None), where
        if (table.name, ours_column.name) not in DROPPED_DEFAULTS:
            assert (ours_column.server_default is None) == (their_column.server_default is None), (
                where
            )


@pytest.mark.parametrize("table", OURS, ids=lambda table: table.name)
def test_keys_and_indexes_are_the_facility_ones(table: Table) -> None:
    theirs = facility(table)
    their_fks = {
        fk.name: ([e.parent.name for e in fk.elements], [e.target_fullname for e in fk.elements])
        for fk in theirs.foreign_key_constraints
    }
    for fk in table.foreign_key_constraints:
        assert their_fks[fk.name] == (
            [e.parent.name for e in fk.elements],
            [e.target_fullname for e in fk.elements],
        )
    their_indexes = {ix.name: ([c.name for c in ix.columns], ix.unique) for ix in theirs.indexes}
    assert len(table.indexes) == len(theirs.indexes)
    for index in table.indexes:
        name = RENAMED_INDEXES.get((table.name, index.name), index.name)
        assert their_indexes[name] == ([c.name for c in index.columns], index.unique)


def test_foreign_keys_reach_every_defined_parent() -> None:
    """Every facility FK between two tables we define is present here (none silently lost)."""
    ours = set(Base.metadata.tables)
    for table in OURS:
        facility_fks = facility(table).foreign_key_constraints
        expected = {fk.name for fk in facility_fks if fk.referred_table.name in ours}
        assert {fk.name for fk in table.foreign_key_constraints} == expected, table.name


def test_keys_are_unsigned_and_foreign_keys_match_their_targets() -> None:
    for table in OURS:
        for column in table.primary_key.columns:
            assert mariadb_type(column).endswith("UNSIGNED"), f"{table.name}.{column.name}"
        for fk in table.foreign_key_constraints:
            for element in fk.elements:
                child, parent = mariadb_type(element.parent), mariadb_type(element.column)
                # Display widths may differ (int(10) vs int(11)); the storage type may not.
                assert child.split("(")[0] == parent.split("(")[0], element.target_fullname
                assert child.endswith("UNSIGNED") == parent.endswith("UNSIGNED"), (
                    f"{table.name}.{element.parent.name} -> {element.target_fullname}"
                )


def test_index_names_are_unique_across_the_database() -> None:
    from chimp_worker.ispyb.worker_tables import WorkerBase

    tables = [*Base.metadata.tables.values(), *WorkerBase.metadata.tables.values()]
    names = [index.name for table in tables for index in table.indexes]
    assert len(names) == len(set(names))
    assert not set(names) & {table.name for table in tables}
