"""Creating and upgrading the database schema: two independent Alembic histories.

- ``core``: the ISPyB core subset (``tables.py``) plus its lookup rows, for development, test and
  the embedded SQLite default. Never applied to a real ISPyB, whose schema belongs to the facility.
- ``worker``: the worker's own ``chimp_*`` tables (``worker_tables.py``), the only thing migrated
  on a real ISPyB.

Each history keeps its revision in its own version table, so either can move on its own.
``upgrade(url, "auto")`` looks at the database first: an existing ISPyB (core tables present,
not created by us) gets the worker history only; an empty or development database gets both.
``create_all`` is the fast path for tests: the same tables and rows, stamped at both heads.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from chimp_worker.errors import DatabaseSchemaError
from chimp_worker.ispyb.database import make_engine, translate_db_errors
from chimp_worker.ispyb.seed import seed_core
from chimp_worker.ispyb.tables import Base
from chimp_worker.ispyb.worker_tables import WorkerBase

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# A wheel carries the histories inside the package (setup.py copies them there); a source
# checkout or an editable install keeps them in the repository's top-level migrations/.
MIGRATIONS_DIRS = (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "migrations")
Target = Literal["auto", "all", "core", "worker"]
DatabaseKind = Literal["empty", "development", "ispyb"]
TARGETS: tuple[str, ...] = ("auto", "all", "core", "worker")


@dataclass(frozen=True)
class History:
    name: str
    metadata: MetaData
    version_table: str

    @property
    def script_location(self) -> Path:
        for folder in MIGRATIONS_DIRS:
            if (folder / self.name / "env.py").is_file():
                return folder / self.name
        return MIGRATIONS_DIRS[0] / self.name

    def owns(self, table_name: str) -> bool:
        return table_name in self.metadata.tables


HISTORIES: Mapping[str, History] = {
    "core": History("core", Base.metadata, "chimp_core_alembic_version"),
    "worker": History("worker", WorkerBase.metadata, "chimp_alembic_version"),
}


@dataclass(frozen=True)
class UpgradeReport:
    """What ``upgrade`` found and did: the database kind and each history's revisions."""

    kind: DatabaseKind
    before: Mapping[str, str | None]
    after: Mapping[str, str | None]

    @property
    def changed(self) -> bool:
        return dict(self.before) != dict(self.after)


def alembic_config(history: str, connection: Connection | None = None) -> Config:
    """An in-memory Alembic config for one history; no ini file needed."""
    location = HISTORIES[history].script_location
    if not (location / "env.py").is_file():
        searched = " or ".join(str(folder / history) for folder in MIGRATIONS_DIRS)
        raise DatabaseSchemaError(
            f"migration scripts not found at {searched}; reinstall chimp-worker from its wheel "
            "or a source checkout (the wheel ships them as chimp_worker/migrations)"
        )
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = connection
    return config


def run_alembic_environment(history: str) -> None:
    """Body of ``migrations/<history>/env.py``: online with a connection, or offline SQL."""
    from alembic import context

    spec = HISTORIES[history]
    options: dict[str, Any] = {
        "target_metadata": spec.metadata,
        "version_table": spec.version_table,
        "include_name": _include_name_for(spec),
        "render_as_batch": True,
        "compare_type": True,
    }
    connection = context.config.attributes.get("connection")
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "CHIMP_DATABASE_URL"
    )
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    if not url:
        raise DatabaseSchemaError("no database: pass -x url=... or set CHIMP_DATABASE_URL")
    engine = make_engine(url, create=True)
    try:
        with engine.begin() as own_connection:
            context.configure(connection=own_connection, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _include_name_for(spec: History) -> Callable[..., bool]:
    def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        if type_ == "table":
            return name is not None and spec.owns(name)
        return True

    return include_name


def detect_kind(connection: Connection) -> DatabaseKind:
    """Empty, one we created (core version table present), or an existing ISPyB."""
    tables = set(inspect(connection).get_table_names())
    if HISTORIES["core"].version_table in tables:
        return "development"
    core = set(Base.metadata.tables)
    present = core & tables
    if not present:
        return "empty"
    missing = sorted(core - tables)
    if missing:
        raise DatabaseSchemaError(
            f"the database has some ISPyB tables ({', '.join(sorted(present)[:5])}...) but not "
            f"{', '.join(missing)}; it is neither empty nor a usable ISPyB"
        )
    return "ispyb"


def histories_for(target: Target, kind: DatabaseKind) -> tuple[str, ...]:
    """Which histories to apply; refuses to create core tables inside an existing ISPyB."""
    if target not in TARGETS:
        raise DatabaseSchemaError(f"unknown target {target!r}; expected one of {TARGETS}")
    if target == "worker" or (target == "auto" and kind == "ispyb"):
        return ("worker",)
    if kind == "ispyb":
        raise DatabaseSchemaError(
            f"target {target!r} would create ISPyB core tables inside an existing ISPyB, whose "
            "schema belongs to the facility; use --target worker (or auto)"
        )
    return ("core", "worker") if target in ("auto", "all") else ("core",)


def current_revisions(connection: Connection) -> dict[str, str | None]:
    """Each history's revision in the database (None: not applied)."""
    revisions = {}
    for name, spec in HISTORIES.items():
        context = MigrationContext.configure(connection, opts={"version_table": spec.version_table})
        revisions[name] = context.get_current_revision()
    return revisions


def head_revisions() -> dict[str, str | None]:
    """Each history's newest revision in migrations/."""
    return {
        name: ScriptDirectory.from_config(alembic_config(name)).get_current_head()
        for name in HISTORIES
    }


def upgrade(
    url: str, target: Target = "auto", *, connect_args: Mapping[str, Any] | None = None
) -> UpgradeReport:
    """Bring the database to the newest revision of what ``target`` needs; again: a no-op."""
    engine = make_engine(url, connect_args, create=True)
    try:
        with translate_db_errors():
            with engine.connect() as connection:
                kind = detect_kind(connection)
                before = current_revisions(connection)
            for history in histories_for(target, kind):
                with engine.begin() as connection:
                    command.upgrade(alembic_config(history, connection), "head")
            with engine.connect() as connection:
                after = current_revisions(connection)
        return UpgradeReport(kind, before, after)
    finally:
        engine.dispose()


def upgrade_sql(
    url: str, target: Target = "worker", *, connect_args: Mapping[str, Any] | None = None
) -> str:
    """The DDL ``upgrade`` would run, as SQL text for a DBA (offline: nothing is executed,
    and an SQLite file that does not exist yet is not created)."""
    kind: DatabaseKind = "empty"
    before: dict[str, str | None] = dict.fromkeys(HISTORIES)
    if not _is_missing_sqlite_file(url):
        engine = make_engine(url, connect_args)
        try:
            with translate_db_errors(), engine.connect() as connection:
                kind = detect_kind(connection)
                before = current_revisions(connection)
        finally:
            engine.dispose()
    output = io.StringIO()
    for history in histories_for(target, kind):
        config = alembic_config(history)
        config.output_buffer = output
        config.cmd_opts = argparse.Namespace(x=[f"url={url}"])  # read by the env's offline mode
        start = before[history]
        command.upgrade(config, f"{start}:head" if start else "head", sql=True)
    return output.getvalue()


def _is_missing_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    database = parsed.database or ""
    return (
        parsed.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
        and not Path(database).exists()
    )


def current(
    url: str, *, connect_args: Mapping[str, Any] | None = None
) -> tuple[DatabaseKind, dict[str, str | None], dict[str, str | None]]:
    """(database kind, revisions in the database, newest revisions available)."""
    engine = make_engine(url, connect_args)
    try:
        with translate_db_errors(), engine.connect() as connection:
            return detect_kind(connection), current_revisions(connection), head_revisions()
    finally:
        engine.dispose()


def create_all(url: str) -> None:
    """Create both histories' tables and the lookup rows directly, stamped at both heads.

    Gives exactly the schema ``upgrade(url, "all")`` gives (a test holds it to that) in a
    fraction of the time, for test fixtures.
    """
    engine = make_engine(url, create=True)
    try:
        create_all_on(engine)
    finally:
        engine.dispose()


def _create_tables_with_inline_indexes(connection: Connection, metadata: MetaData) -> None:
    """CREATE TABLE with every index inline: one DDL per table instead of one per index.

    SQLAlchemy creates MariaDB indexes as separate statements, each an online ALTER costing
    ~60 ms; ``Container`` alone has 16. Test fixtures create this schema for every test.
    """
    existing = set(inspect(connection).get_table_names())
    base_compiler = connection.dialect.ddl_compiler  # the dialect's DDLCompiler class

    class InlineIndexCompiler(base_compiler):  # type: ignore[misc, valid-type]  # base known at run time
        def create_table_constraints(self, table: Any, *args: Any, **kw: Any) -> str:
            constraints = super().create_table_constraints(table, *args, **kw)
            quote = self.preparer.quote
            keys = [
                f"{'UNIQUE ' if index.unique else ''}KEY {quote(index.name)} "
                f"({', '.join(quote(column.name) for column in index.columns)})"
                for index in sorted(table.indexes, key=lambda index: index.name)
            ]
            return ", \n\t".join(part for part in (constraints, *keys) if part)

    for table in metadata.sorted_tables:
        if table.name not in existing:
            ddl = InlineIndexCompiler(connection.dialect, CreateTable(table)).string
            connection.exec_driver_sql(ddl)  # the compiler already escaped % for the driver


def create_all_on(engine: Engine) -> None:
    with engine.begin() as connection:
        for metadata in (Base.metadata, WorkerBase.metadata):
            if connection.dialect.name == "mysql":
                _create_tables_with_inline_indexes(connection, metadata)
            else:
                metadata.create_all(connection)
        seed_core(connection)
        for history in HISTORIES:
            command.stamp(alembic_config(history, connection), "head")
