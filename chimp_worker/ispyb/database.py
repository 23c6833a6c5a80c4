"""Engines, sessions and the translation of database errors into the worker's hierarchy.

One place decides how the worker talks to ISPyB: SQLite gets foreign keys, a busy timeout and
``BEGIN IMMEDIATE`` (so two writers queue instead of dead-locking on a lock upgrade); MariaDB
gets pre-ping, recycled connections and READ COMMITTED (short transactions, fewer gap locks).
Transient failures become ``DatabaseUnavailableError`` so the consumer retries the unit of work.
SQL never reaches a log: engines hide bound parameters from error messages
(``hide_parameters``), and ``database_errors_described`` turns what escapes a unit of work into
one line with the server's code and text, without the statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import (
    ChimpError,
    DatabaseAccessError,
    DatabaseError,
    DatabaseRefusedError,
    DatabaseSchemaError,
    DatabaseUnavailableError,
    MissingGrantError,
)

if TYPE_CHECKING:
    from chimp_worker.config import Settings

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


@dataclass(frozen=True, kw_only=True)
class DatabaseOptions:
    """Where ISPyB is and how to connect: the database slice of ``Settings``. Both fields may
    hold a password: they are kept out of ``repr``."""

    url: str = field(repr=False)
    connect_args: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseOptions:
        return cls(
            url=settings.database_url,
            connect_args=MappingProxyType(dict(settings.database_connect_args)),
        )


def engine_for(options: DatabaseOptions, *, create: bool = False) -> Engine:
    """``make_engine`` for the configured database."""
    return make_engine(options.url, options.connect_args, create=create)


def make_engine(
    url: str, connect_args: Mapping[str, Any] | None = None, *, create: bool = False
) -> Engine:
    """An Engine for ISPyB or an SQLite file, configured for short, retryable transactions.

    An SQLite file that does not exist is refused (``DatabaseAccessError``) unless ``create``:
    only schema creation makes one, so a query with a mistyped path never leaves an empty file.
    """
    parsed = make_url(url)
    args = dict(connect_args or {})
    if parsed.get_backend_name() == "sqlite":
        if not create and parsed.database not in (None, "", ":memory:"):
            _require_sqlite_file(parsed.database)
        args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(url, connect_args=args, pool_pre_ping=True, hide_parameters=True)
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
        hide_parameters=True,  # rows of image ids and results never end up in an error or log
    )


def _require_sqlite_file(database: str) -> None:
    if database.startswith("file:"):  # a URI filename: sqlite3 itself reports a missing file
        return
    path = Path(database)
    if not path.is_file():
        raise DatabaseAccessError(
            f"database_url: the SQLite file {path.resolve()} does not exist; create it with "
            "`chimp-worker db upgrade`, or point CHIMP_DATABASE_URL (--database-url) at the "
            "right file"
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
    if isinstance(original, exc.StatementError):  # no driver error under it: never its SQL
        return type(original).__name__
    return f"{type(original).__name__}: {original}"[:500]


@contextmanager
def database_errors_described() -> Iterator[None]:
    """At the edge of a unit of work: any database error left becomes ``DatabaseError``, one
    line with the server's code and text. ``from None``: a traceback of the original would
    print the statement."""
    try:
        yield
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        if is_transient(error):
            raise DatabaseUnavailableError(describe(error)) from None
        raise DatabaseError(describe(error)) from None


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn transient database failures into ``DatabaseUnavailableError``; others pass through."""
    try:
        yield
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        if is_transient(error):
            raise database_error(error) from error
        raise


# MariaDB codes (and SQLite messages) of a write the database refuses for good.
REFUSAL_MYSQL_CODES: Mapping[int, str] = {
    1451: "db_refused_foreign_key",  # a row still references the one being deleted
    1452: "db_refused_foreign_key",  # the row references one that does not exist
    1216: "db_refused_foreign_key",
    1217: "db_refused_foreign_key",
    1062: "db_refused_duplicate",
    1586: "db_refused_duplicate",
    1048: "db_refused_constraint",  # NOT NULL
    1364: "db_refused_constraint",  # no default for a NOT NULL column
    3819: "db_refused_constraint",  # CHECK (MySQL)
    4025: "db_refused_constraint",  # CHECK (MariaDB)
    1264: "db_refused_data",  # out of range
    1265: "db_refused_data",  # truncated
    1366: "db_refused_data",  # incorrect value
    1406: "db_refused_data",  # too long
}
REFUSAL_SQLITE_MESSAGES: Mapping[str, str] = {
    "foreign key constraint failed": "db_refused_foreign_key",
    "unique constraint failed": "db_refused_duplicate",
    "not null constraint failed": "db_refused_constraint",
    "check constraint failed": "db_refused_constraint",
}


def refusal_reason(error: BaseException) -> str | None:
    """The ``DatabaseRefusedError`` reason of a refused write, or None for other errors."""
    if not isinstance(error, exc.IntegrityError | exc.DataError | exc.OperationalError):
        return None
    original = getattr(error, "orig", None) or error
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int):
        return REFUSAL_MYSQL_CODES.get(args[0])
    message = str(original).lower()
    for text_, reason in REFUSAL_SQLITE_MESSAGES.items():
        if text_ in message:
            return reason
    return "db_refused" if isinstance(error, exc.IntegrityError) else None


@contextmanager
def translate_refusals() -> Iterator[None]:
    """Turn a refused write into ``DatabaseRefusedError``: permanent, with a specific reason."""
    try:
        yield
    except (exc.IntegrityError, exc.DataError, exc.OperationalError) as error:
        reason = refusal_reason(error)
        if reason is None or is_transient(error):
            raise
        raise DatabaseRefusedError(describe(error), reason=reason) from error


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error, errors translated."""
    with translate_db_errors(), session_factory() as session, session.begin():
        yield session


def probe_database(session_factory: sessionmaker[Session]) -> str | None:
    """``SELECT 1`` through the worker's own pool: None when the database answers, else why
    not (any error: an outage, a refused login, a server shutting down)."""
    from sqlalchemy import text

    try:
        with session_factory() as session:
            session.execute(text("SELECT 1")).all()
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        return describe(error)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


# Errors no retry can fix: the worker's credentials, grants or schema are wrong. A daemon that
# met these per message would dead-letter every message; it must refuse to start instead.
ACCESS_MYSQL_CODES: Mapping[int, str] = {
    1044: "access to the database denied",
    1045: "access denied for this user and password",
    1049: "unknown database",
    1142: "a table privilege is missing",
    1143: "a column privilege is missing",
}
ACCESS_FIXES: Mapping[int, str] = {
    1044: "ask the ISPyB administrators for the grants in docs/reliability.md",
    1045: "check the user and password in database_url or the ISPYB_CREDENTIALS file",
    1049: "check the database name in database_url or the ISPYB_CREDENTIALS file",
    1142: "ask the ISPyB administrators for the grants in docs/reliability.md",
    1143: "ask the ISPyB administrators for the grants in docs/reliability.md",
}
SQLITE_ACCESS = ("unable to open database file", "file is not a database", "readonly database")
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


def check_database_access(
    engine: Engine, score_schema: str | None = None, *, analyser: str | None = None
) -> str | None:
    """Fail fast on credentials, grants or a missing schema, before any message is taken.

    With ``score_schema`` (the schema the configured analyser writes under), also refuses
    when ISPyB lacks that schema or its classes, or has it disabled, and when the worker may
    not read a table that refers to auto sub-samples (it could not tell a queued point from a
    free one), with the SQL to hand to the ISPyB administrators. Raises
    ``DatabaseAccessError``, ``DatabaseSchemaError`` or ``ScoreSchemaError`` (all exit 2);
    returns a description (and lets the daemon start) when the database is merely
    unreachable, since per-message retries cover an outage.
    """
    from sqlalchemy import text

    try:
        with engine.connect() as connection:
            for query in PREFLIGHT_QUERIES:
                connection.execute(text(query)).all()
        if score_schema is not None:
            _check_ispyb_lookups(engine, score_schema, analyser)
    except DatabaseUnavailableError as error:
        return str(error)
    except (exc.SQLAlchemyError, sqlite3.Error) as error:
        translated = database_error(error)
        if isinstance(translated, DatabaseUnavailableError):
            return describe(error)
        if isinstance(translated, DatabaseAccessError | DatabaseSchemaError):
            raise translated from None
        raise
    return None


def _check_ispyb_lookups(engine: Engine, score_schema: str, analyser: str | None) -> None:
    """The score schema is writable and every reference to a sub-sample is readable."""
    from chimp_worker.ispyb import score_schema as schemas
    from chimp_worker.ispyb.references import forget, reference_tables
    from chimp_worker.log import get_logger

    found = schemas.require(engine, score_schema, analyser=analyser)
    for warning in found.warnings:
        get_logger(__name__).warning("score_schema_id_above_9", detail=warning)
    forget(engine)  # probe afresh: grants may have changed since this engine last looked
    references = reference_tables(engine)
    if not references.complete:
        names = ", ".join(reference.table for reference in references.denied)
        raise MissingGrantError(
            f"database_url: the worker may not read {names} (pointing at auto sub-samples); "
            "without that it cannot tell a queued or collected point from a free one. Ask the "
            "ISPyB administrators for:\n"
            + "\n".join(
                f"  {grant}"
                for grant in references.grants(
                    user=f"'{engine.url.username or 'chimp_worker'}'@'%'",
                    schema=f"`{engine.url.database or 'ispyb'}`",
                )
            )
        )


def mysql_code(error: BaseException) -> int | None:
    """The MariaDB/MySQL error number inside a driver or SQLAlchemy error, if any."""
    original = getattr(error, "orig", None) or error
    args = getattr(original, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def database_error(error: BaseException) -> ChimpError:
    """Any database error as one of the worker's errors, in one line naming cause and fix.

    Transient (retry) -> ``DatabaseUnavailableError``; credentials, grants, unknown database,
    unreadable SQLite file -> ``DatabaseAccessError``; missing tables ->
    ``DatabaseSchemaError``; anything else -> ``DatabaseError``. Never the SQL or its values.
    """
    if isinstance(error, ChimpError):
        return error
    original = getattr(error, "orig", None) or error
    code = mysql_code(error)
    message = str(original)
    lowered = message.lower()
    if code == 1146 or "no such table" in lowered:
        detail = f"MariaDB error 1146: {original.args[1]}" if code else message
        return DatabaseSchemaError(
            f"database_url: {detail}; the schema is missing or old: run `chimp-worker db "
            "upgrade` (on a facility's ISPyB it creates only the chimp_* tables)"
        )
    if code is not None and code in ACCESS_MYSQL_CODES:
        detail = str(original.args[1]) if len(original.args) > 1 else ""
        return DatabaseAccessError(
            f"database_url: MariaDB error {code}, {ACCESS_MYSQL_CODES[code]}: {detail}; "
            f"{ACCESS_FIXES.get(code, 'check the database user and its grants')}"
        )
    if is_transient(error):
        return DatabaseUnavailableError(
            f"{describe(error)}; check that the database server is running and reachable at "
            "database_url's host and port, then try again"
        )
    if isinstance(original, sqlite3.Error) and any(text in lowered for text in SQLITE_ACCESS):
        return DatabaseAccessError(
            f"database_url: SQLite: {message}; check the file's path and permissions "
            "(CHIMP_DATABASE_URL, --database-url)"
        )
    return DatabaseError(describe(error))
