"""``chimp-worker db``: create or upgrade the schema, show where it stands, and the score
schema the analyser needs in ISPyB."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.config import mask_url

if TYPE_CHECKING:
    from chimp_worker.ispyb.schema import Target

TARGET_HELP = (
    "auto: detect an existing ISPyB and migrate only the worker's chimp_* tables there, "
    "everything on an empty or development database; all: core + worker; core: the ISPyB "
    "core subset (never on a real ISPyB); worker: the chimp_* tables only."
)


@click.group()
def db() -> None:
    """Create or upgrade the database schema (two Alembic histories: core and worker).

    \b
    Example:
      chimp-worker db upgrade && chimp-worker db current
    """


@db.command("upgrade")
@click.option(
    "--target",
    type=click.Choice(["auto", "all", "core", "worker"]),
    default="auto",
    show_default=True,
    help=TARGET_HELP,
)
@click.option("--sql", is_flag=True, help="Print the DDL instead of running it (for a DBA).")
@pass_app
def upgrade_command(app: AppContext, target: Target, sql: bool) -> None:
    """Bring the database to the newest schema; running it again changes nothing.

    \b
    Example:
      chimp-worker db upgrade                                  # embedded SQLite default
      chimp-worker --database-url mysql+mysqldb://u:p@host/ispyb db upgrade --target worker
      chimp-worker db upgrade --target worker --sql > chimp-tables.sql
    """
    from chimp_worker.ispyb import schema

    settings = app.settings()
    if sql:
        ddl = schema.upgrade_sql(
            settings.database_url,
            target,
            connect_args=settings.database_connect_args,
        )
        click.echo(ddl, nl=False)
        return
    report = schema.upgrade(
        settings.database_url,
        target,
        connect_args=settings.database_connect_args,
    )
    click.echo(f"database: {mask_url(settings.database_url)} ({report.kind})")
    for history, after in report.after.items():
        before = report.before[history]
        if before == after:
            state = "not applied" if after is None else f"at {after}, nothing to do"
        else:
            state = f"{before or 'empty'} -> {after}"
        click.echo(f"  {history:7} {state}")


@db.command("current")
@pass_app
def current_command(app: AppContext) -> None:
    """Show the database's kind and each history's revision against the newest available.

    \b
    Example:
      chimp-worker db current
    """
    from chimp_worker.ispyb import schema

    settings = app.settings()
    kind, revisions, heads = schema.current(
        settings.database_url, connect_args=settings.database_connect_args
    )
    click.echo(f"database: {mask_url(settings.database_url)} ({kind})")
    for history, revision in revisions.items():
        head = heads[history]
        if revision is None:
            note = "not applied"
        elif revision == head:
            note = "up to date"
        else:
            note = f"behind: newest is {head}; run 'chimp-worker db upgrade'"
        click.echo(f"  {history:7} {revision or '-':14} {note}")


@db.command("score-schema")
@click.option(
    "--schema",
    "schema_name",
    help="The auto-score schema [default: the configured analyser's, CHIMP or BASELINE_CV].",
)
@click.option(
    "--apply", is_flag=True, help="Run the statements (development databases only, never ISPyB)."
)
@pass_app
def score_schema_command(app: AppContext, schema_name: str | None, apply: bool) -> None:
    """Print the SQL that adds the auto-score schema the analyser writes under, for the ISPyB
    administrators: its BLSampleImageAutoScoreSchema row (the lowest free id; SynchWeb takes
    single-digit ids only), its four classes, or the UPDATE that enables it. Prints only a
    comment when the schema is ready. A facility's ISPyB holds MARCO and CHIMP; the
    weight-free baseline's BASELINE_CV must be added.

    \b
    Example:
      chimp-worker db score-schema > score-schema.sql     # hand to the ISPyB administrators
      chimp-worker db score-schema --schema BASELINE_CV
      chimp-worker db score-schema --apply                # a development database
    """
    from chimp_worker.ispyb import score_schema
    from chimp_worker.ispyb.database import DatabaseOptions, engine_for, translate_db_errors

    settings = app.settings()
    name = schema_name or score_schema.analyser_schema(settings)
    engine = engine_for(DatabaseOptions.from_settings(settings))
    try:
        if apply:
            before, after = score_schema.apply(engine, name)
            if before.statements:
                click.echo(before.sql(), nl=False)
                click.echo(f"-- applied on {mask_url(settings.database_url)}")
            click.echo(after.sql(), nl=False)
            return
        with translate_db_errors(), engine.connect() as connection:
            found = score_schema.check(connection, name)
    finally:
        engine.dispose()
    click.echo(found.sql(), nl=False)
