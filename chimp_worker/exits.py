"""Exit statuses, and the one line every error becomes when it reaches the command line.

Every command gets this for free: ``cli.LazyGroup`` sends whatever a command raises through
``failure``, so a new command only raises the worker's errors (or lets a database, broker or
file error through) and never prints tracebacks itself. ``--debug`` shows the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from chimp_worker.errors import ChimpError, ConfigError, OptionalDependencyError

SUCCESS = 0
FAILURE = 1  # at run time: a service unreachable, a plate not found, a file not writable
USAGE = 2  # configuration or usage: fix the settings or the command line, then start again
INTERRUPTED = 130  # Ctrl-C (SIGINT) outside the daemon, which stops gracefully with 0

EXIT_STATUS_HELP = """\b
Exit status:
  0    success (the daemon: stopped by SIGTERM/SIGINT or a --max-messages/--idle-exit limit)
  1    runtime failure: database or broker unreachable, nothing found, a file not writable,
       run --idle-exit without ever reaching the broker
  2    configuration or usage: a bad setting or option, the database or broker refused the
       login (or the vhost, or a grant), a missing or bad model file, missing tables or
       score schema (run `chimp-worker db upgrade`); systemd does not restart on 2
  130  interrupted (Ctrl-C)"""

# Optional packages and the extra that brings them (setup.cfg [options.extras_require]).
EXTRAS = {"pycocotools": "evaluate", "matplotlib": "evaluate"}


@dataclass(frozen=True)
class Failure:
    """What the command line prints (one line, to stderr) and the status it exits with."""

    status: int
    message: str
    reason: str = "error"


def failure(error: BaseException) -> Failure:
    """One line naming the cause (and, where the error knows it, the fix) and an exit status;
    an error whose following lines are instructions (``print_whole_message``) keeps them.

    Foreign errors are translated by the module that owns them (``ispyb.database`` for
    SQLAlchemy and the drivers, ``broker`` for pika); an error nobody expected is a bug: one
    line that says so, exit 1.
    """
    if isinstance(error, KeyboardInterrupt):
        return Failure(INTERRUPTED, "chimp-worker: interrupted", "interrupted")
    known = translate(error)
    if known is None:
        return Failure(
            FAILURE,
            f"chimp-worker: unexpected error: {type(error).__name__}: {_first_line(error)} "
            "(run the command again with --debug for the traceback, and report it)",
            "unexpected_error",
        )
    text = str(known).strip() if known.print_whole_message else _first_line(known)
    if type(known) is ConfigError:
        message = f"chimp-worker: configuration error: {text}"
    else:
        message = f"chimp-worker: {known.reason}: {text}"
    return Failure(known.exit_status, message, known.reason)


def translate(error: BaseException) -> ChimpError | None:
    """The worker's own error for ``error``; None when it is not a known kind (a bug)."""
    if isinstance(error, ChimpError):
        return error
    package = type(error).__module__.split(".", 1)[0]
    if package in ("sqlalchemy", "sqlite3", "MySQLdb", "_mysql"):
        from chimp_worker.ispyb.database import database_error

        return database_error(error)
    if package == "pika":
        from chimp_worker.broker import broker_error

        return broker_error(error)
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXTRAS:
        package_name = (error.name or "").split(".")[0]
        extra = EXTRAS[package_name]
        return OptionalDependencyError(
            f"{package_name} is not installed; this command needs the '{extra}' extra: "
            f"pip install 'chimp-worker[{extra}]'"
        )
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return ChimpError(f"{error.strerror}{where}", reason="os_error")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
