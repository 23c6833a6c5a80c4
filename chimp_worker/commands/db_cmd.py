"""``chimp-worker db``: create or upgrade the schema, and show where it stands."""

from __future__ import annotations

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.config import mask_url

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
def upgrade_command(app: AppContext, target: str, sql: bool) -> None:
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
            target,  # type: ignore[arg-type]
            connect_args=settings.database_connect_args,
        )
        click.echo(ddl, nl=False)
        return
    report = schema.upgrade(
        settings.database_url,
        target,  # type: ignore[arg-type]
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
