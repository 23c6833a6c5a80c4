"""``chimp-worker demo``: the whole pipeline on a mock plate, SQLite, no services needed."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import (
    FOLDER,
    flavour_option,
    image_faults_option,
    render_size_option,
    schedule_option,
    seed_option,
)

if TYPE_CHECKING:
    from rich.console import Console

    from chimp_worker.config import Settings
    from chimp_worker.mock_imager.demo import DemoOptions, DemoResult
    from chimp_worker.pipeline import ImageProgress

# One character per drop on the plate map, by top class.
_MARKS = {"crystal": "X", "clear": ".", "precipitant": "p", "other": "o"}


@click.command()
@click.option(
    "--out",
    "output_dir",
    type=FOLDER,
    default=Path("chimp-worker-demo"),
    show_default=True,
    help="Directory for the SQLite database, the images and the report.",
)
@flavour_option(default="vmxi")
@click.option("--wells", type=click.IntRange(1, 96), default=12, show_default=True)
@seed_option()
@schedule_option(10, "Inspections of the plate (crystals grow between them).")
@render_size_option(64, "Render WIDTHxHEIGHT (default: native).")
@image_faults_option("Damage a drop's image: LOCATION=missing|truncated|corrupt|empty|not_image.")
@click.option("--http", "over_http", is_flag=True, help="Fetch images over a loopback HTTP server.")
@click.option("--no-report", is_flag=True, help="Skip the HTML/PNG plate overview.")
@pass_app
def demo(
    app: AppContext,
    output_dir: Path,
    flavour: str,
    wells: int,
    seed: int,
    inspections: int,
    size: tuple[int, int] | None,
    faults: dict[int, str],
    over_http: bool,
    no_report: bool,
) -> None:
    """Run the worker's whole job on a mock plate: an SQLite ISPyB created with the real
    migrations, a plate imaged the way a facility's imager does it, every image processed by
    the same pipeline code the RabbitMQ daemon runs, the results written to the ISPyB tables,
    a plate overview printed and written as HTML and PNG. Nothing else is needed: no broker,
    no database server, no model files.

    Without model files the weight-free baseline analyser runs (schema BASELINE_CV, never
    CHIMP); with CHIMP_CLASSIFIER_PATH / CHIMP_VMXI_DETECTOR_PATH / CHIMP_XCHEM_DETECTOR_PATH
    set, the CHiMP models do. Each run adds a plate (DEMO-0001, DEMO-0002...) to the same
    database; the mock plate's ground truth is used to check the stored results.

    \b
    Example:
      chimp-worker demo
      chimp-worker demo --flavour xchem --wells 4 --schedule 3
      chimp-worker demo --wells 2 --fault 1=truncated --fault 3=missing --http
      CHIMP_CLASSIFIER_PATH=~/chimp/classifier.pytorch chimp-worker demo --wells 2
    """
    from rich.console import Console

    from chimp_worker.log import configure_logging
    from chimp_worker.mock_imager.demo import DemoOptions

    settings = app.settings()
    configure_logging("ERROR", settings.log_format)  # failed images are summarised below
    # A terminal sets the width; piped or captured output gets room for the table.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    options = DemoOptions(
        output_dir=output_dir,
        flavour=flavour,
        wells=wells,
        seed=seed,
        inspections=inspections,
        image_size=size,
        faults=faults,
        over_http=over_http,
        report=not no_report,
    )
    analyser = settings.effective_analyser
    note = (
        "CHiMP models"
        if analyser == "chimp"
        else "weight-free baseline (no model files configured; results under BASELINE_CV)"
    )
    console.print(f"[bold]chimp-worker demo[/bold]: analyser {analyser} -- {note}")
    result = _run_with_progress(console, settings, options)
    _print_overview(console, result)


def _run_with_progress(console: Console, settings: Settings, options: DemoOptions) -> DemoResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from chimp_worker.mock_imager.demo import run_demo

    columns = (
        TextColumn("{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}
        failed: Counter[str] = Counter()

        def stage(name: str, total: int) -> None:
            tasks[name] = progress.add_task(name, total=total, note="")

        def created(_image: object) -> None:
            progress.advance(tasks["imaging"])

        def processed(update: ImageProgress) -> None:
            if update.reason:
                failed[update.reason] += 1
            note = ", ".join(f"{n} {reason}" for reason, n in failed.items())
            progress.update(tasks["processing"], advance=1, note=note and f"failed: {note}")

        return run_demo(
            settings,
            options,
            on_stage=stage,
            on_image_created=created,
            on_image_processed=processed,
        )


def _print_overview(console: Console, result: DemoResult) -> None:
    from rich.table import Table

    from chimp_worker.analysis import ispyb_class

    plate = result.plate
    checks = result.checks
    console.print(
        f"\nplate [bold]{plate.barcode}[/bold] ({plate.container_type}, {plate.flavour}): "
        f"{len(plate.blSampleIds)} drops, {len(plate.inspections)} inspection(s), "
        f"{result.images_processed} images analysed by [bold]{result.analyser}[/bold] "
        f"(schema {result.schema_name}) in {result.seconds:.1f} s"
    )
    table = Table(
        title=f"latest inspection {plate.latest.containerInspectionId}, schema "
        f"{result.schema_name} (classes as ISPyB names them)",
        title_justify="left",
    )
    for heading in (
        "well",
        "drop",
        "truth",
        "top class",
        "P(crystal)",
        "targets",
        "dispense",
        "state",
    ):
        table.add_column(heading)
    for check in checks:
        row = check.result
        point = (
            f"({row.dispenseX:.0f}, {row.dispenseY:.0f})"
            if row.dispenseX is not None and row.dispenseY is not None
            else (row.dispenseStatus or "-")
        )
        p_crystal = row.pCrystal
        state = row.state if row.state != "failed" else f"[red]failed: {row.failureReason}[/red]"
        table.add_row(
            check.image.well,
            str(check.image.drop),
            (ispyb_class(check.image.truth.outcome) or "-")
            + (f" ({len(check.image.truth.crystals)})" if check.image.truth.crystals else ""),
            row.topClass or "-",
            "-" if p_crystal is None else f"{p_crystal:.2f}",
            str(len(row.targets)),
            point,
            state,
        )
    console.print(table)
    _print_plate_map(console, result)
    _print_truth_summary(console, result)
    _print_hits(console, result)
    console.print("\n[bold]where things are[/bold]")
    console.print(f"  database   {result.database_path}")
    console.print(f"  images     {plate.visit_dir / 'imaging' / str(plate.containerId)}")
    if result.report_html is not None:
        console.print(f"  overview   {result.report_html}  (open in a browser)")
        console.print(f"  schematic  {result.report_png}")
    console.print("  results    chimp-worker --database-url \\", soft_wrap=True)
    console.print(
        f"               {result.database_url} results --barcode {plate.barcode}", soft_wrap=True
    )
    console.print("  hits       chimp-worker --database-url \\", soft_wrap=True)
    console.print(
        f"               {result.database_url} hits --barcode {plate.barcode}", soft_wrap=True
    )


def _print_plate_map(console: Console, result: DemoResult) -> None:
    """Rows A-H, columns 1-12: a character per drop, coloured red to green by P(crystal)."""
    by_well: dict[str, list[str]] = {}
    for check in result.checks:
        row = check.result
        if row.state == "failed":
            mark = "[bold red]![/bold red]"
        else:
            char = _MARKS.get(row.topClass or "", "?")
            p = row.pCrystal or 0.0
            red, green = round(255 * (1 - p)), round(255 * p)
            mark = f"[rgb({red},{green},60)]{char}[/]"
        by_well.setdefault(check.image.well, []).append(mark)
    used_rows = sorted({well[0] for well in by_well})
    console.print(
        f"\nplate map, top class (schema {result.schema_name}): "
        "X crystal, . clear, p precipitant, o other, ! failed"
    )
    console.print("     " + "".join(f"{column:<4}" for column in range(1, 13)))
    for letter in used_rows:
        cells = [
            "".join(by_well.get(f"{letter}{column}", ["  "])) + "  " for column in range(1, 13)
        ]
        console.print(f"  {letter}  " + "".join(cells))


def _print_hits(console: Console, result: DemoResult) -> None:
    """Each drop over the schedule: the worker's verdicts beside the truth's first crystal."""
    from rich.table import Table

    checks = result.hit_checks
    inspections = len(result.plate.inspections)
    if not checks:
        return
    table = Table(
        title="hits over time (X hit, . no hit; P(crystal) and crystals counted)",
        title_justify="left",
    )
    for heading in ("well", "drop", "rank", *(f"insp {n}" for n in range(1, inspections + 1))):
        table.add_column(heading)
    table.add_column("first hit")
    table.add_column("truth: first crystal")
    for check in checks:
        by_number = {point.inspectionNumber: point for point in check.course}
        cells = []
        for number in range(1, inspections + 1):
            point = by_number.get(number)
            if point is None:
                cells.append("-")
                continue
            mark = "[bold green]X[/]" if point.isHit else "."
            p_crystal = "-" if point.pCrystal is None else f"{point.pCrystal:.2f}"
            cells.append(f"{mark} {p_crystal} {point.crystalCount}")
        verdict = "[green]agrees[/]" if check.agrees else "[red]differs[/]"
        table.add_row(
            check.well,
            str(check.drop),
            "-" if check.rank is None else str(check.rank),
            *cells,
            "-" if check.first_hit is None else f"insp {check.first_hit}",
            ("-" if check.truth_first is None else f"insp {check.truth_first}") + f" {verdict}",
        )
    console.print()
    console.print(table)
    summary = result.hit_summary
    console.print(
        f"  first hits at the truth's first crystal   {summary.crystal_exact}/"
        f"{summary.crystal_drops} drops with crystals ({summary.early} early, {summary.late} "
        f"late, {summary.missed} missed); {summary.false_hits} of "
        f"{summary.drops - summary.crystal_drops} drops without crystals called a hit"
    )
    for inspection in result.plate.inspections:
        number = inspection.index + 1
        new = [c for c in checks if c.first_hit == number]
        names = ", ".join(f"{c.well}.{c.drop}" for c in new) or "none"
        console.print(f"  new hits at inspection {number}: {len(new)} ({names})")


def _print_truth_summary(console: Console, result: DemoResult) -> None:
    checks = result.checks
    done = [c for c in checks if c.result.state == "done"]
    with_drop = [c for c in done if c.drop_found is not None]
    with_point = [c for c in done if c.dispense_in_drop is not None]
    targets = sum(len(c.result.targets) for c in done)
    crystals = sum(len(c.image.truth.crystals) for c in done)
    failures = Counter(c.result.failureReason for c in checks if c.result.state == "failed")
    console.print(
        "\n[bold]checked against the mock plate's ground truth[/bold] (latest inspection)"
    )
    drop_found = sum(bool(c.drop_found) for c in with_drop)
    console.print(f"  drop found inside the true drop   {drop_found}/{len(done)}")
    inside = sum(bool(c.dispense_in_drop) for c in with_point)
    on_crystal = sum(bool(c.dispense_on_crystal) for c in with_point)
    console.print(
        f"  dispense point in the true drop   {inside}/{len(with_point)}, on a crystal {on_crystal}"
    )
    console.print(
        f"  crystal targets on true crystals  {sum(c.targets_on_crystals for c in done)}/{targets}"
    )
    console.print(
        f"  true crystals with a target       {sum(c.crystals_found for c in done)}/{crystals}"
    )
    if failures:
        expected = sum(c.failure_as_expected for c in checks if c.image.fault)
        shown = ", ".join(f"{n} {reason}" for reason, n in failures.items())
        console.print(
            f"  failed images                     {shown} "
            f"({expected}/{sum(1 for c in checks if c.image.fault)} injected faults as expected)"
        )
