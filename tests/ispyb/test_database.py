"""Engines and error translation against the real backends: locks become retryable errors."""

from __future__ import annotations

import pytest
from helpers.ispyb_rows import Plate
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import DatabaseError, DatabaseUnavailableError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import (
    database_errors_described,
    make_engine,
    transaction,
    translate_db_errors,
)


def test_sqlite_lock_becomes_database_unavailable(ispyb_sqlite_url: str) -> None:
    holder = make_engine(ispyb_sqlite_url)
    impatient = make_engine(ispyb_sqlite_url, connect_args={"timeout": 0.2})
    try:
        with holder.begin() as held:  # BEGIN IMMEDIATE: holds the write lock
            held.execute(text("UPDATE InspectionType SET name = 'Visible' WHERE 1 = 0"))
            with (
                pytest.raises(DatabaseUnavailableError, match="database is locked"),
                translate_db_errors(),
                impatient.begin() as connection,
            ):
                connection.execute(text("SELECT 1"))
    finally:
        holder.dispose()
        impatient.dispose()


@pytest.mark.mariadb
def test_mariadb_lock_wait_timeout_becomes_database_unavailable(mariadb_url: str) -> None:
    holder = make_engine(mariadb_url)
    waiter = make_engine(mariadb_url)
    try:
        with holder.begin() as connection:
            connection.execute(text("CREATE TABLE probe (id INT PRIMARY KEY) ENGINE=InnoDB"))
            connection.execute(text("INSERT INTO probe VALUES (1)"))
        with holder.begin() as held:
            held.execute(text("SELECT id FROM probe WHERE id = 1 FOR UPDATE"))
            with waiter.connect() as connection:
                connection.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
                with pytest.raises(DatabaseUnavailableError, match="1205"), translate_db_errors():
                    connection.execute(text("UPDATE probe SET id = 2 WHERE id = 1"))
    finally:
        holder.dispose()
        waiter.dispose()


def test_unreachable_server_becomes_database_unavailable() -> None:
    engine = make_engine("mysql+mysqldb://nobody@127.0.0.1:9/ispyb", {"connect_timeout": 2})
    with (
        pytest.raises(DatabaseUnavailableError, match=r"200[23]"),
        translate_db_errors(),
        engine.connect(),
    ):
        pass
    engine.dispose()


def test_other_errors_pass_through_untranslated(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(t.Container(barcode="CQX-0001"))  # the plate's barcode: unique


def test_a_failed_statement_never_shows_its_parameters_and_is_described_without_sql(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    with pytest.raises(IntegrityError) as raw, transaction(factory) as session:
        session.add(t.Container(barcode="CQX-0001", comments="secret-comment-value"))
    assert "secret-comment-value" not in str(raw.value)
    with (
        pytest.raises(DatabaseError) as described,
        database_errors_described(),
        transaction(factory) as session,
    ):
        session.add(t.Container(barcode="CQX-0001", comments="secret-comment-value"))
    message = str(described.value)
    assert "secret-comment-value" not in message
    assert "INSERT" not in message
    assert ("1062" in message) or ("UNIQUE constraint failed" in message)
    assert described.value.__cause__ is None
    assert described.value.__suppress_context__


def test_engine_is_configured_per_backend(engine: Engine) -> None:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        else:
            isolation = connection.execute(text("SELECT @@tx_isolation")).scalar()
            assert isolation == "READ-COMMITTED"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
