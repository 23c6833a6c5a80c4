"""``chimp-worker config``: the effective settings and where each came from; the example file."""

from __future__ import annotations

import json
from importlib import resources

import click

from chimp_worker.cli import AppContext, pass_app

EXAMPLE = "chimp-worker.toml"


@click.group()
def config() -> None:
    """Inspect the effective configuration, or print the commented example settings file.

    \b
    Example:
      chimp-worker config show
      chimp-worker config example > /etc/chimp-worker/chimp-worker.toml
    """


@config.command("show")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default="toml")
@pass_app
def show(app: AppContext, fmt: str) -> None:
    """Print the effective settings with secrets masked. The TOML view says after each value
    where it came from: command line, environment (CHIMP_*), the settings file, a credentials
    file (ISPYB_CREDENTIALS, amqp_credentials) or the default.

    \b
    Example:
      CHIMP_SCORE_THRESHOLD=0.7 chimp-worker config show
      chimp-worker config show --format json | jq .amqp_url
    """
    from chimp_worker.config import load_settings_with_sources

    settings, sources = load_settings_with_sources(app.config_file, **app.overrides)
    data = settings.masked()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    width = max(len(key) for key in data)
    for key in sorted(data):
        value = data[key]
        line = f"# {key} is not set" if value is None else f"{key} = {json.dumps(value)}"
        click.echo(f"{line:<{width + 40}}  # {sources[key]}")


@config.command("example")
def example() -> None:
    """Print the commented example settings file (every setting, its default and meaning).

    \b
    Example:
      chimp-worker config example > /etc/chimp-worker/chimp-worker.toml
    """
    click.echo(example_text(), nl=False)


def example_text() -> str:
    return resources.files("chimp_worker").joinpath("examples", EXAMPLE).read_text()
