"""``chimp-worker hits``: the drops that became crystal hits, ranked by promise."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from typing import TYPE_CHECKING, Any

import click

from chimp_worker.cli import AppContext, pass_app

if TYPE_CHECKING:
    from chimp_worker.ispyb.hit_queries import CoursePoint, HitRow

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]

# JSON and CSV: every field; the table for people: the ones to decide with.
HIT_COLUMNS = (
    "barcode",
    "visit",
    "rank",
    "well",
    "drop",
    "location",
    "blSampleId",
    "isHit",
    "firstHitInspection",
    "firstHitInspectionId",
    "firstHitAt",
    "firstHitScore",
    "score",
    "pCrystal",
    "crystalCount",
    "crystalAreaPx",
    "crystalAreaUm2",
    "growthUm2",
    "growthFactor",
    "promise",
    "latestInspection",
    "latestAt",
)
HIT_TABLE_COLUMNS = (
    "barcode",
    "rank",
    "well",
    "drop",
    "isHit",
    "firstHitInspection",
    "firstHitAt",
    "score",
    "crystalCount",
    "crystalAreaUm2",
    "growthUm2",
    "promise",
)


@click.command()
@click.option("--barcode", help="Only this plate (Container.barcode).")
@click.option("--visit", help="Only plates of this visit, e.g. mx12345-6.")
@click.option(
    "--since",
    type=click.DateTime(_DATE_FORMATS),
    metavar="DATE",
    help="Only drops that were hits at an inspection at or after this time "
    "(YYYY-MM-DD[ HH:MM[:SS]], as stored in ISPyB); with --new: that first became hits then.",
)
@click.option(
    "--new",
    is_flag=True,
    help="Only drops that first became hits in the period (--since), or at their plate's "
    "latest inspection when no --since is given.",
)
@click.option(
    "--all", "all_drops", is_flag=True, help="Every drop with a time course, hit or not, ranked."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--refresh",
    is_flag=True,
    help="First recompute the selected plates' time courses with the configured hit rule and "
    "thresholds (CHIMP_HIT_RULE, CHIMP_HIT_THRESHOLDS_FILE); needs write access.",
)
@pass_app
def hits(
    app: AppContext,
    barcode: str | None,
    visit: str | None,
    since: dt.datetime | None,
    new: bool,
    all_drops: bool,
    fmt: str,
    refresh: bool,
) -> None:
    """Drops that became crystal hits, best first: one row per drop with the inspection it
    first became a hit at (1-based, in time order), its score now, its counted crystals and
    their area (um^2), its growth since the first hit and its rank on the plate by promise.

    A hit is called per image by the configured rule (both models by default; docs/hits.md)
    and stored when an inspection completes. JSON rows also carry each drop's time course.

    \b
    Example:
      chimp-worker hits --barcode CQX-0001
      chimp-worker hits --visit mx12345-6 --since 2024-03-01 --new --format json
      chimp-worker hits --barcode CQX-0001 --new            # new at the latest inspection
      chimp-worker hits --barcode CQX-0001 --all --format csv > ranked.csv
      chimp-worker hits --barcode CQX-0001 --refresh        # after new thresholds
    """
    from chimp_worker.ispyb.hit_queries import HitFilters, course_points, find_hits
    from chimp_worker.report import tables
    from chimp_worker.wiring import make_database

    if barcode is None and visit is None and since is None:
        raise click.UsageError("give --barcode, --visit or --since")
    try:
        filters = HitFilters(barcode, visit, since, new, all_drops)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--visit") from None
    settings = app.settings()
    engine, factory = make_database(settings)
    try:
        if refresh:
            _refresh(factory, settings, filters)
        rows = find_hits(factory, filters)
        points = course_points(factory, [row.containerId for row in rows]) if fmt == "json" else {}
    finally:
        engine.dispose()
    records = [_record(row, points.get(row.blSampleId, [])) for row in rows]
    if fmt == "json":
        columns: tuple[str, ...] = (*HIT_COLUMNS, "course")
    else:
        columns = HIT_TABLE_COLUMNS if fmt == "table" else HIT_COLUMNS
    what = "drops ranked by promise" if all_drops else "crystal hits ranked by promise"
    if new:
        what = "new " + what
    meta = {
        "barcode": barcode,
        "visit": visit,
        "since": since.isoformat(sep=" ") if since else None,
        "new": new,
        "all": all_drops,
    }
    width = shutil.get_terminal_size((240, 24)).columns if sys.stdout.isatty() else 240
    title = " · ".join(part for part in (barcode or visit or "", what) if part)
    click.echo(tables.render(records, columns, fmt, title=title, meta=meta, width=width), nl=False)


def _refresh(factory: Any, settings: Any, filters: Any) -> None:
    """Recompute the time course of every plate the filters select (with a course or not)."""
    from chimp_worker.ispyb.hit_queries import plates_for
    from chimp_worker.ispyb.time_course import refresh_plate
    from chimp_worker.wiring import make_hit_policy

    policy = make_hit_policy(settings)
    refreshed = 0
    for container_id in plates_for(factory, filters):
        if refresh_plate(factory, container_id, policy) is not None:
            refreshed += 1
    click.echo(f"refreshed the time course of {refreshed} plate(s) ({policy.rule} rule)", err=True)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _record(row: HitRow, points: list[CoursePoint]) -> dict[str, Any]:
    return {
        "barcode": row.barcode,
        "visit": row.visit,
        "rank": row.rank,
        "well": row.well,
        "drop": row.drop,
        "location": row.location,
        "blSampleId": row.blSampleId,
        "isHit": row.isHit,
        "firstHitInspection": row.firstHitInspection,
        "firstHitInspectionId": row.firstHitInspectionId,
        "firstHitAt": row.firstHitAt,
        "firstHitScore": _round(row.firstHitScore),
        "score": _round(row.score),
        "pCrystal": _round(row.pCrystal),
        "crystalCount": row.crystalCount,
        "crystalAreaPx": row.crystalAreaPx,
        "crystalAreaUm2": _round(row.crystalAreaUm2, 1),
        "growthUm2": _round(row.growthUm2, 1),
        "growthFactor": _round(row.growthFactor, 3),
        "promise": _round(row.promise),
        "latestInspection": row.latestInspection,
        "latestAt": row.latestAt,
        "course": [
            {
                "inspection": point.inspectionNumber,
                "containerInspectionId": point.containerInspectionId,
                "at": point.inspectedAt.isoformat(sep=" ") if point.inspectedAt else None,
                "blSampleImageId": point.blSampleImageId,
                "pCrystal": _round(point.pCrystal),
                "crystalCount": point.crystalCount,
                "crystalAreaUm2": _round(point.crystalAreaUm2, 1),
                "score": _round(point.score),
                "isHit": point.isHit,
            }
            for point in points
        ],
    }
