"""``chimp-worker replay``: re-process backlogged inspections, by queue or in this process."""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING

import click

from chimp_worker.cli import AppContext, pass_app

if TYPE_CHECKING:
    from rich.progress import Task
    from rich.text import Text
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from chimp_worker.config import Settings
    from chimp_worker.pipeline import Pipeline
    from chimp_worker.replay import Backlog, BacklogInspection, ReplaySummary

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]


@click.command()
@click.option(
    "--since",
    type=click.DateTime(_DATE_FORMATS),
    metavar="DATE",
    help="Completed at or after this time: YYYY-MM-DD[ HH:MM[:SS]], as stored in ISPyB.",
)
@click.option(
    "--until", type=click.DateTime(_DATE_FORMATS), metavar="DATE", help="Completed before."
)
@click.option("--barcode", help="Only this plate.")
@click.option(
    "--inspection",
    "inspection_ids",
    type=click.IntRange(min=1),
    multiple=True,
    help="Only this ContainerInspection (repeatable).",
)
@click.option("--visit", help="Only plates of this visit, e.g. mx12345-6.")
@click.option("--failed-only", is_flag=True, help="Only images whose last attempt failed.")
@click.option(
    "--model-changed",
    is_flag=True,
    help="Only images processed with other model files than configured now (by sha256).",
)
@click.option(
    "--rule-changed",
    is_flag=True,
    help="Only images whose targets were computed by another target_rule than configured now "
    "(e.g. stored before the published rule became the default).",
)
@click.option("--dry-run", is_flag=True, help="List the inspections and image counts; do nothing.")
@click.option(
    "--local",
    is_flag=True,
    help="Process here with the daemon's pipeline instead of publishing work to the queue.",
)
@click.option(
    "--announce",
    is_flag=True,
    help="With --local: publish results-ready for the inspections it completes, as a daemon does.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 288),
    help="Images per work item [default: CHIMP_IMAGES_PER_WORK_ITEM].",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    default=0,
    show_default=True,
    help="Priority of the published work items (live inspections use 0 too).",
)
@pass_app
def replay(
    app: AppContext,
    since: dt.datetime | None,
    until: dt.datetime | None,
    barcode: str | None,
    inspection_ids: tuple[int, ...],
    visit: str | None,
    failed_only: bool,
    model_changed: bool,
    rule_changed: bool,
    dry_run: bool,
    local: bool,
    announce: bool,
    chunk_size: int | None,
    priority: int,
) -> None:
    """Find Completed inspections with images that have no result, failed, or were processed
    with other model files or by another target rule, and process them again.

    By default the work is published to the work queue (publisher confirms) for the running
    daemons; --local processes it here with the same pipeline code. The backlog is recomputed
    from the database on every run, so after Ctrl-C or a crash the same command finishes the
    rest, and results already written are never duplicated. Safe while daemons run.

    \b
    Example:
      chimp-worker replay --dry-run                         # what is behind, nothing done
      chimp-worker replay --since 2024-03-01 --failed-only  # queue the failed images again
      chimp-worker replay --barcode CQX-0001 --local        # process one plate here
      chimp-worker replay --local --announce                # ... and publish results-ready
      chimp-worker replay --visit mx12345-6 --model-changed # after installing new weights
      chimp-worker replay --rule-changed --dry-run          # results of the old target rule
    """
    from chimp_worker.log import configure_logging
    from chimp_worker.replay import (
        ReplayFilters,
        ReplaySummary,
        current_model_checksums,
        current_target_rule,
        find_backlog,
    )
    from chimp_worker.wiring import make_database

    if dry_run and local:
        raise click.UsageError("--dry-run and --local: pick one")
    if announce and not local:
        raise click.UsageError("--announce goes with --local (queued work is announced by daemons)")
    settings = app.settings()
    configure_logging("WARNING", settings.log_format)  # progress bar and summary speak for it
    filters = ReplayFilters(
        since=since,
        until=until,
        barcode=barcode,
        inspection_ids=inspection_ids,
        visit=visit,
        failed_only=failed_only,
        model_changed=model_changed,
        rule_changed=rule_changed,
    )
    size = chunk_size or settings.images_per_work_item
    pipeline = None
    if local:
        from chimp_worker.wiring import make_pipeline

        pipeline = make_pipeline(settings)
        factory = pipeline.session_factory
        checksums = frozenset(pipeline.model_checksums)
        rule = pipeline.target_rule
        engine = None
    else:
        engine, factory = make_database(settings)
        checksums = current_model_checksums(settings)
        rule = current_target_rule(settings)
    summary = ReplaySummary(mode="dry-run" if dry_run else "local" if local else "queue")
    try:
        if not dry_run:  # refuse before reopening anything, as `run` refuses before consuming
            _preflight(settings, pipeline.engine if pipeline is not None else engine)
        backlog = find_backlog(factory, filters, checksums, rule)
        for missing in backlog.not_completed:
            click.echo(f"warning: inspection {missing} is not a Completed inspection; skipped")
        click.echo(_plan_text(backlog))
        if dry_run or not backlog.inspections:
            summary.inspections = len(backlog.inspections)
            summary.images_planned = backlog.image_count
            summary.skipped = backlog.images_matched - backlog.image_count
        else:
            _do_work(settings, factory, backlog, pipeline, size, priority, summary)
            if announce and pipeline is not None:
                from chimp_worker.broker import BrokerOptions, Publisher
                from chimp_worker.replay import announce_results

                with Publisher(
                    BrokerOptions.from_settings(settings), connection_name="chimp-worker replay"
                ) as publisher:
                    announce_results(backlog, pipeline, publisher, settings, summary=summary)
    except KeyboardInterrupt:
        summary.interrupted = True
        click.echo(_summary_text(summary))
        click.echo("interrupted: run the same command again to finish the rest", err=True)
        sys.exit(130)
    finally:
        if pipeline is not None:
            pipeline.close()
        if engine is not None:
            engine.dispose()
    click.echo(_summary_text(summary))


def _preflight(settings: Settings, engine: Engine | None) -> None:
    """The checks ``run`` makes at start-up: grants, tables, the analyser's score schema."""
    from chimp_worker.ispyb.database import check_database_access
    from chimp_worker.ispyb.score_schema import analyser_schema

    if engine is not None:
        check_database_access(
            engine, analyser_schema(settings), analyser=settings.effective_analyser
        )


def _do_work(
    settings: Settings,
    factory: sessionmaker[Session],
    backlog: Backlog,
    pipeline: Pipeline | None,
    size: int,
    priority: int,
    summary: ReplaySummary,
) -> None:
    """Publish or process the backlog under a progress bar (images, rate, ETA)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from chimp_worker.replay import (
        process_backlog,
        publish_backlog,
        reopen_done_inspections,
        settle_reopened,
    )

    class RateColumn(ProgressColumn):
        """Images per second, from rich's moving window."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("  -- img/s" if speed is None else f"{speed:6.2f} img/s")

    reopened = reopen_done_inspections(factory, backlog)
    handed_over: set[int] = set()  # queued: a daemon that does an item completes its inspection
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )

    def published(inspection: BacklogInspection, chunk: tuple[int, ...]) -> None:
        handed_over.add(inspection.containerInspectionId)
        progress.advance(task, len(chunk))

    try:
        with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
            if pipeline is not None:
                task = progress.add_task("processing", total=backlog.image_count)
                process_backlog(
                    backlog,
                    pipeline,
                    chunk_size=size,
                    on_image=lambda _event: progress.advance(task),
                    summary=summary,
                )
            else:
                from chimp_worker.broker import BrokerOptions, Publisher

                task = progress.add_task("publishing", total=backlog.image_count)
                with Publisher(
                    BrokerOptions.from_settings(settings), connection_name="chimp-worker replay"
                ) as publisher:
                    publish_backlog(
                        backlog,
                        publisher,
                        chunk_size=size,
                        priority=priority,
                        on_item=published,
                        summary=summary,
                    )
    except BaseException:
        # Never leave an inspection reopened: what was not handed over completes again.
        settle_reopened(factory, [i for i in reopened if i not in handed_over])
        raise


def _plan_text(backlog: Backlog) -> str:
    """The inspections with work, one line each, and a total line."""
    from chimp_worker.replay import FAILED, MODEL_CHANGED, RULE_CHANGED, UNPROCESSED

    lines = [
        f"{'inspection':>10}  {'barcode':<16} {'visit':<12} {'completed':<16} {'images':>6} "
        f"{'todo':>5} {'unproc':>6} {'failed':>6} {'model':>5} {'rule':>5}  failure reasons"
    ]
    for item in backlog.inspections:
        completed = item.completed.strftime("%Y-%m-%d %H:%M") if item.completed else "-"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(item.failure_reasons.items()))
        lines.append(
            f"{item.containerInspectionId:>10}  {item.barcode or '-':<16} {item.visit or '-':<12} "
            f"{completed:<16} {item.image_count:>6} {len(item.image_ids):>5} "
            f"{len(item.work.get(UNPROCESSED, ())):>6} {len(item.work.get(FAILED, ())):>6} "
            f"{len(item.work.get(MODEL_CHANGED, ())):>5} "
            f"{len(item.work.get(RULE_CHANGED, ())):>5}  {reasons}"
        )
    lines.append(
        f"backlog: {len(backlog.inspections)} of {backlog.matched} matching inspections need "
        f"work; {backlog.image_count} images ({backlog.count(UNPROCESSED)} unprocessed, "
        f"{backlog.count(FAILED)} failed, {backlog.count(MODEL_CHANGED)} model changed, "
        f"{backlog.count(RULE_CHANGED)} rule changed)"
    )
    return "\n".join(lines)


def _summary_text(summary: ReplaySummary) -> str:
    failed = sum(summary.failed.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.failed.items()))
    return (
        f"summary ({summary.mode}{', interrupted' if summary.interrupted else ''}): "
        f"inspections {summary.inspections}, images planned {summary.images_planned}, "
        f"processed {summary.processed}, unchanged {summary.unchanged}, "
        f"failed {failed}{f' ({reasons})' if reasons else ''}, skipped {summary.skipped}, "
        f"work items published {summary.published}, "
        f"inspections completed {summary.completed_inspections}"
        + (f", results-ready published {summary.announced}" if summary.announced else "")
    )
