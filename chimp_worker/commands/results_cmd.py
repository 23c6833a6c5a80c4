"""``chimp-worker results``: what ISPyB holds for a plate, as staff see it in SynchWeb."""

from __future__ import annotations

import shutil
import sys

import click

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.cli import AppContext, pass_app

BASELINE_NOTE = (
    f"schema {BASELINE_SCHEMA}: made by the weight-free baseline analyser, not the CHiMP "
    "models; set the model files and run `chimp-worker replay --model-changed` to redo them"
)


@click.command()
@click.option("--barcode", help="The plate's barcode (Container.barcode).")
@click.option(
    "--inspection",
    "inspection_id",
    type=click.IntRange(min=1),
    help="A ContainerInspection id: that inspection's images instead of the latest per drop.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--crystals", is_flag=True, help="List every auto crystal target (BLSubSample).")
@click.option("--inspections", is_flag=True, help="List the plate's inspections and their state.")
@pass_app
def results(
    app: AppContext,
    barcode: str | None,
    inspection_id: int | None,
    fmt: str,
    crystals: bool,
    inspections: bool,
) -> None:
    """Results of a plate: one row per drop (well, drop, top class, P(crystal), crystal
    targets and those kept for staff, dispense point and whose it is, processing state).

    Reads ISPyB the way SynchWeb does: without --inspection, each drop's latest image; the
    dispense point is always the one SynchWeb shows (the drop's highest-id dispensing row),
    marked worker's or staff's. Probabilities are rounded to 4 decimals, coordinates are
    image pixels from the top-left.

    \b
    Example:
      chimp-worker results --barcode CQX-0001
      chimp-worker results --inspection 4711 --format csv > inspection-4711.csv
      chimp-worker results --barcode CQX-0001 --crystals --format json
      chimp-worker results --barcode CQX-0001 --inspections
    """
    from chimp_worker.ispyb import queries
    from chimp_worker.report import tables
    from chimp_worker.wiring import make_database

    if barcode is None and inspection_id is None:
        raise click.UsageError("give --barcode or --inspection")
    if crystals and inspections:
        raise click.UsageError("--crystals and --inspections are separate views: pick one")
    settings = app.settings()
    engine, factory = make_database(settings)
    try:
        if barcode is not None:
            plate = queries.find_plate(factory, barcode=barcode)
        else:
            plate = queries.find_plate(factory, inspection_id=inspection_id)
        scope = f"inspection {inspection_id}" if inspection_id else "latest image per drop"
        meta = {
            "barcode": plate.barcode,
            "containerId": plate.containerId,
            "containerType": plate.container_type,
            "visit": plate.visit,
            "containerInspectionId": inspection_id,
        }
        if inspections:
            rows = tables.inspection_rows(queries.plate_inspections(factory, plate))
            columns: tuple[str, ...] = tables.INSPECTION_COLUMNS
            title = tables.plate_title(plate, "inspections")
        elif crystals:
            rows = tables.target_rows(queries.crystal_targets(factory, plate, inspection_id))
            columns = tables.TARGET_COLUMNS
            title = tables.plate_title(plate, f"auto crystal targets, {scope}")
        else:
            rows = tables.drop_rows(queries.drop_results(factory, plate, inspection_id))
            columns = tables.DROP_TABLE_COLUMNS if fmt == "table" else tables.DROP_COLUMNS
            title = tables.plate_title(plate, scope)
    finally:
        engine.dispose()
    width = shutil.get_terminal_size((240, 24)).columns if sys.stdout.isatty() else 240
    click.echo(tables.render(rows, columns, fmt, title=title, meta=meta, width=width), nl=False)
    if fmt == "table" and any(row.get("schema") == BASELINE_SCHEMA for row in rows):
        click.echo(BASELINE_NOTE)
