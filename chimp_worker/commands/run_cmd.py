"""``chimp-worker run``: the RabbitMQ worker daemon."""

from __future__ import annotations

import click

from chimp_worker.cli import AppContext, pass_app


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    help="Work items processed at once (default: CHIMP_CONCURRENCY, 1).",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    help="Stop consuming after this many messages, finish them, exit 0 (tests, batch jobs).",
)
@click.option(
    "--idle-exit",
    "idle_exit_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Exit 0 after this many seconds with no message in hand or arriving.",
)
@pass_app
def run(
    app: AppContext, concurrency: int | None, max_messages: int | None, idle_exit_s: float | None
) -> None:
    """Consume inspection events and work items from RabbitMQ and write results to ISPyB.

    Runs until SIGTERM/SIGINT (finishes the message in hand within CHIMP_GRACE_PERIOD_S,
    otherwise returns it to the queue) or until a limit below is reached; exits 0.
    Liveness: CHIMP_LIVENESS_FILE and /healthz on CHIMP_METRICS_PORT (with /metrics).
    Under systemd (Type=notify) it sends READY=1 and watchdog pings.

    \b
    Example:
      CHIMP_DATABASE_URL=mysql+mysqldb://chimp:pw@db/ispyb \\
      CHIMP_AMQP_URL=amqp://chimp:pw@rabbit:5672/%2F \\
      CHIMP_METRICS_PORT=9100 chimp-worker run --concurrency 2
      chimp-worker run --max-messages 10 --idle-exit 30     # a batch job
    """
    overrides = {"concurrency": concurrency} if concurrency else {}
    settings = app.settings(**overrides)
    from chimp_worker.daemon import run_daemon
    from chimp_worker.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    run_daemon(settings, max_messages=max_messages, idle_exit_s=idle_exit_s)
