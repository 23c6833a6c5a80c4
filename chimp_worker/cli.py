"""The ``chimp-worker`` command line: a thin shell over library functions.

Commands live in ``chimp_worker.commands.*`` and are imported only when invoked, so
``--help`` and ``config show`` start instantly without loading torch. Two things every command
gets from ``LazyGroup`` without asking: the global options (``--config``, ``--database-url``,
``--debug``), accepted before or after the subcommand, and error handling: whatever a command
raises becomes one line on stderr and an exit status (``chimp_worker.exits``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from chimp_worker import __version__
from chimp_worker.config import Settings, load_settings
from chimp_worker.exits import EXIT_STATUS_HELP, INTERRUPTED, Failure, failure

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
    "dlq": ("chimp_worker.commands.dlq_cmd:dlq", "List, show, reinject or purge dead letters."),
    "results": ("chimp_worker.commands.results_cmd:results", "Query results for a plate."),
    "hits": ("chimp_worker.commands.hits_cmd:hits", "List crystal hits, ranked by promise."),
    "report": ("chimp_worker.commands.report_cmd:report", "Write an HTML plate overview."),
    "bench": ("chimp_worker.commands.bench_cmd:bench", "Measure throughput and memory."),
    "evaluate": ("chimp_worker.commands.evaluate_cmd:evaluate", "Score models on labelled data."),
    "train": ("chimp_worker.commands.train_cmd:train", "Fine-tune models on local images."),
}


@dataclass
class AppContext:
    """Per-invocation state: settings are built once, on first use, then passed down."""

    config_file: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    _settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        if overrides:
            return load_settings(self.config_file, **{**self.overrides, **overrides})
        if self._settings is None:
            self._settings = load_settings(self.config_file, **self.overrides)
        return self._settings

    def set_option(self, name: str, value: Any) -> None:
        """A global option given after the subcommand (it wins over one given before)."""
        if name == "config_file":
            self.config_file = value
        elif name == "debug":
            self.debug = self.debug or bool(value)
        else:
            self.overrides[name] = value
        self._settings = None


pass_app = click.make_pass_decorator(AppContext)


class CommandFailed(click.ClickException):
    """An error from a command, already one line, with its exit status."""

    def __init__(self, result: Failure) -> None:
        super().__init__(result.message)
        # click declares exit_code a ClassVar, yet reads it from the instance it catches
        self.exit_code = result.status  # type: ignore[misc]  # each failure has its own status
        self.reason = result.reason

    def show(self, file: Any = None) -> None:
        """Plain text for people; a JSON log line where the logs are a JSON stream."""
        from chimp_worker.log import failures_as_json, get_logger

        if failures_as_json():
            get_logger("chimp_worker.cli").error(
                "command_failed",
                error=self.message.removeprefix("chimp-worker: "),
                reason=self.reason,
                exit_status=self.exit_code,
            )
        else:
            click.echo(self.message, err=True)


def _global_options() -> list[click.Option]:
    """The options every subcommand accepts too; each writes into the ``AppContext``."""

    def store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
        def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
            app = ctx.find_object(AppContext)
            if app is not None and value not in (None, False):
                app.set_option(name, value)

        return callback

    return [
        click.Option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False, path_type=Path),
            expose_value=False,
            callback=store("config_file"),
            help="Settings file (TOML); see `chimp-worker config show`.",
        ),
        click.Option(
            ["--database-url"],
            expose_value=False,
            callback=store("database_url"),
            help="Override CHIMP_DATABASE_URL for this command.",
        ),
        click.Option(
            ["--debug"],
            is_flag=True,
            expose_value=False,
            callback=store("debug"),
            help="Show the traceback of an error.",
        ),
    ]


def _with_global_options(command: click.Command) -> click.Command:
    """Add the global options to a command and, for a group, to every command inside it."""
    if getattr(command, "_chimp_global_options", False):
        return command
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    command.params.extend(option for option in _global_options() if not set(option.opts) & taken)
    command._chimp_global_options = True  # type: ignore[attr-defined]  # our marker on click's object
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_global_options(sub)
    return command


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used, gives
    it the global options, and turns whatever it raises into one line and an exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute = entry[0].split(":")
        return _with_global_options(getattr(importlib.import_module(module_name), attribute))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table: importing them all would load torch."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as error:
            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                raise
            raise CommandFailed(failure(error)) from error


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_STATUS_HELP,
)
@click.version_option(__version__, prog_name="chimp-worker")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CHIMP_CONFIG",
    help="Settings file (TOML); default /etc/chimp-worker/chimp-worker.toml when it exists. "
    "CHIMP_* environment variables override it.",
)
@click.option("--database-url", help="Override CHIMP_DATABASE_URL for this command.")
@click.option("--debug", is_flag=True, envvar="CHIMP_DEBUG", help="Show the traceback of an error.")
@click.pass_context
def cli(
    ctx: click.Context, config_file: Path | None, database_url: str | None, debug: bool
) -> None:
    """Analyse crystallisation-plate images with the CHiMP models and write results to ISPyB.

    The global options may also follow the subcommand (chimp-worker results --debug ...).

    \b
    Example:
      chimp-worker demo                 # whole pipeline on a mock plate, SQLite, no services
      chimp-worker run                  # the RabbitMQ daemon
      chimp-worker config show          # effective settings, where each came from
    """
    from chimp_worker.log import configure_logging

    # Until a command knows its settings: warnings of any library, as JSON lines unless a
    # person is watching. The daemon and batch commands raise the level from their settings.
    configure_logging("WARNING", "auto")
    overrides = {"database_url": database_url} if database_url else {}
    ctx.obj = AppContext(config_file=config_file, overrides=overrides, debug=debug)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error is one line and an exit status."""
    try:
        result = cli.main(args=argv, prog_name="chimp-worker", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("chimp-worker: interrupted", err=True)
        sys.exit(INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # --debug lets errors through; an interrupt still exits 130
        click.echo("chimp-worker: interrupted", err=True)
        sys.exit(INTERRUPTED)
    if isinstance(result, int) and not isinstance(result, bool) and result:
        sys.exit(result)  # a command that returned its own status (ctx.exit)


if __name__ == "__main__":
    main()
