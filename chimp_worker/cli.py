"""The ``chimp-worker`` command line: a thin shell over library functions.

Commands live in ``chimp_worker.commands.*`` and are imported only when invoked, so
``--help`` and ``config show`` start instantly without loading torch. Errors become one line
on stderr at this edge: exit status 2 for configuration errors, 1 for any other known error.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from chimp_worker import __version__
from chimp_worker.config import Settings, load_settings
from chimp_worker.errors import ChimpError, ConfigError

# command name -> ("module:attribute", one-line help); each module owns one command or group.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("chimp_worker.commands.config_cmd:config", "Inspect the effective configuration."),
    "db": ("chimp_worker.commands.db_cmd:db", "Create or upgrade the database schema."),
    "analyse": ("chimp_worker.commands.analyse_cmd:analyse", "Run the models on image files."),
    "models": ("chimp_worker.commands.models_cmd:models", "Inspect and check model files."),
    "mock-imager": (
        "chimp_worker.commands.mock_imager_cmd:mock_imager",
        "Create synthetic plate inspections and publish their events.",
    ),
    "demo": ("chimp_worker.commands.demo_cmd:demo", "Whole pipeline on a mock plate, SQLite."),
    "run": ("chimp_worker.commands.run_cmd:run", "Run the RabbitMQ worker daemon."),
    "replay": ("chimp_worker.commands.replay_cmd:replay", "Re-process backlogged inspections."),
    "results": ("chimp_worker.commands.results_cmd:results", "Query results for a plate."),
    "hits": ("chimp_worker.commands.hits_cmd:hits", "List crystal hits, ranked by promise."),
    "report": ("chimp_worker.commands.report_cmd:report", "Write an HTML plate overview."),
    "bench": ("chimp_worker.commands.bench_cmd:bench", "Measure throughput and memory."),
    "evaluate": ("chimp_worker.commands.evaluate_cmd:evaluate", "Score models on labelled data."),
    "train": ("chimp_worker.commands.train_cmd:train", "Fine-tune models on local images."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute = entry[0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table: importing them all would load torch."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@dataclass
class AppContext:
    """Per-invocation state: settings are built once, on first use, then passed down."""

    config_file: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        if overrides:
            return load_settings(self.config_file, **{**self.overrides, **overrides})
        if self._settings is None:
            self._settings = load_settings(self.config_file, **self.overrides)
        return self._settings


pass_app = click.make_pass_decorator(AppContext)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chimp-worker")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CHIMP_CONFIG",
    help="TOML settings file; CHIMP_* environment variables override it.",
)
@click.option("--database-url", help="Override CHIMP_DATABASE_URL for this command.")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, database_url: str | None) -> None:
    """Analyse crystallisation-plate images with the CHiMP models and write results to ISPyB.

    \b
    Example:
      chimp-worker demo                 # whole pipeline on a mock plate, SQLite, no services
      chimp-worker run                  # the RabbitMQ daemon
      chimp-worker config show          # effective settings, secrets masked
    """
    overrides = {"database_url": database_url} if database_url else {}
    ctx.obj = AppContext(config_file=config_file, overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: known errors become one line and an exit status."""
    try:
        cli.main(args=argv, prog_name="chimp-worker", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"chimp-worker: configuration error: {exc}", err=True)
        sys.exit(2)
    except ChimpError as exc:
        click.echo(f"chimp-worker: {exc.reason}: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
