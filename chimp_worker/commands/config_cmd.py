"""``chimp-worker config``: inspect the effective settings."""

from __future__ import annotations

import json

import click

from chimp_worker.cli import AppContext, pass_app


@click.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default="toml")
@pass_app
def show(app: AppContext, fmt: str) -> None:
    """Print the effective settings (defaults, file, environment) with secrets masked.

    \b
    Example:
      CHIMP_SCORE_THRESHOLD=0.7 chimp-worker config show
    """
    data = app.settings().masked()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for key in sorted(data):
        value = data[key]
        if value is None:
            click.echo(f"# {key} is not set")
        else:
            click.echo(f"{key} = {json.dumps(value)}")
