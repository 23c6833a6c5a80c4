"""Engines, sessions and the translation of database errors into the worker's hierarchy.

One place decides how the worker talks to ISPyB: SQLite gets foreign keys, a busy timeout and
``BEGIN IMMEDIATE`` (so two writers queue instead of dead-locking on a lock upgrade); MariaDB
gets pre-ping, recycled connections and READ COMMITTED (short transactions, fewer gap locks).
Transient failures become ``DatabaseUnavailableError`` so the consumer retries the unit of work.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import DatabaseUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 30_000
MYSQL_POOL_RECYCLE_S = 1800
# Without socket timeouts a server that vanishes without a reset (power loss, partition) hangs
# a worker thread in recv() for ever while its I/O loop still looks alive. Reads allow for
# InnoDB's default 50 s lock wait; every setting can be overridden by database_connect_args.
MYSQL_SOCKET_TIMEOUTS_S: Mapping[str, int] = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "write_timeout": 60,
}

# MariaDB/MySQL client and server error codes that mean "try the same thing again later".
TRANSIENT_MYSQL_CODES: Mapping[int, str] = {
    1205: "lock wait timeout",
    1213: "deadlock",
    2002: "cannot connect (socket)",
    2003: "cannot connect",
    2006: "server has gone away",
    2013: "lost connection during query",
    1040: "too many connections",
    1927: "connection killed",
    4031: "disconnected by the server (idle)",
}
TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database table is locked", "disk i/o error")


def make_engine(url: str, connect_args: Mapping[str, Any] | None = None) -> Engine:
    """An Engine for ISPyB or an SQLite file, configured for short, retryable transactions."""
    parsed = make_url(url)
    args = dict(connect_args or {})
    if parsed.get_backend_name() == "sqlite":
        args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(url, connect_args=args, pool_pre_ping=True)
        _configure_sqlite(engine, in_memory=parsed.database in (None, "", ":memory:"))
        return engine
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        args = {**MYSQL_SOCKET_TIMEOUTS_S, **args}
        if args.get("ssl") and "ssl_mode" not in args and parsed.get_driver_name() == "mysqldb":
            # Under mysqlclient, MariaDB Connector/C quietly connects in plain text to a server
            # without TLS despite ssl options (or ssl_mode REQUIRED); a verifying mode refuses.
            args["ssl_mode"] = "VERIFY_IDENTITY"
    return create_engine(
        url,
        connect_args=args,
        pool_pre_ping=True,
        pool_recycle=MYSQL_POOL_RECYCLE_S,
        isolation_level="READ COMMITTED",
    )


def _configure_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy (below) decide where transactions begin, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")  # the busy timeout comes from connect "timeout"
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a second writer waits (busy_timeout) instead
        # of failing at once on a read-to-write upgrade, which SQLite cannot wait out.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (results are read after the write)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_transient(error: BaseException) -> bool:
    """True for errors where retrying the same unit of work may succeed."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.DisconnectionError | exc.TimeoutError):
        return True
    original = getattr(error, "orig", None) or error
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int) and args[0] in TRANSIENT_MYSQL_CODES:
        return True
    message = str(original).lower()
    return isinstance(original, sqlite3.OperationalError) and any(
        text in message for text in TRANSIENT_SQLITE_MESSAGES
    )


def describe(error: BaseException) -> str:
    """A one-line description of a database error, without SQL or parameters."""
    original = getattr(error, "orig", None) or error
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int):
        meaning = TRANSIENT_MYSQL_CODES.get(args[0])
        detail = str(args[1]) if len(args) > 1 else ""
        return f"MariaDB error {args[0]}{f' ({meaning})' if meaning else ''}: {detail}".strip()
    return f"{type(original).__name__}: {original}"


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn transient database failures into ``DatabaseUnavailableError``; others pass through."""
    try:
        yield
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        if is_transient(error):
            raise DatabaseUnavailableError(describe(error)) from error
        raise


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error, errors translated."""
    with translate_db_errors(), session_factory() as session, session.begin():
        yield session


# Errors no retry can fix: the worker's credentials, grants or schema are wrong. A daemon that
# met these per message would dead-letter every message; it must refuse to start instead.
ACCESS_MYSQL_CODES: Mapping[int, str] = {
    1044: "access to the database denied",
    1045: "access denied for this user and password",
    1049: "unknown database",
    1142: "a table privilege is missing",
    1143: "a column privilege is missing",
    1146: "a table is missing (run: chimp-worker db upgrade)",
}
# One read of each table family the worker needs, as the worker's own user.
PREFLIGHT_QUERIES = (
    "SELECT containerInspectionId, state FROM ContainerInspection LIMIT 1",
    "SELECT blSampleImageId, imageFullPath FROM BLSampleImage LIMIT 1",
    "SELECT containerInspectionId FROM chimp_inspection LIMIT 1",
    "SELECT blSampleImageId FROM chimp_image_result LIMIT 1",
    "SELECT containerId, barcode, containerTypeId FROM Container LIMIT 1",  # new hits' plate
    "SELECT containerTypeId, wellPerRow FROM ContainerType LIMIT 1",
    "SELECT blSampleId FROM chimp_drop_course LIMIT 1",  # the time course (worker_0005)
)


def check_database_access(engine: Engine) -> str | None:
    """Fail fast on credentials, grants or a missing schema, before any message is taken.

    Raises ``ConfigError`` for those; returns a description (and lets the daemon start) when
    the database is merely unreachable, since per-message retries cover an outage.
    """
    from sqlalchemy import text

    from chimp_worker.errors import ConfigError

    try:
        with engine.connect() as connection:
            for query in PREFLIGHT_QUERIES:
                connection.execute(text(query)).all()
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        if is_transient(error):
            return describe(error)
        original = getattr(error, "orig", None) or error
        args = getattr(original, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        if code in ACCESS_MYSQL_CODES:
            detail = str(args[1]) if len(args) > 1 else ""
            raise ConfigError(
                f"database_url: MariaDB error {code}, {ACCESS_MYSQL_CODES[code]}: {detail}"
            ) from None
        if "no such table" in str(original).lower():
            raise ConfigError(f"database_url: {original}; run: chimp-worker db upgrade") from None
        raise
    return None
