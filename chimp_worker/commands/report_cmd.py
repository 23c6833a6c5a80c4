"""``chimp-worker report``: the plate overview as one self-contained HTML file (and a PNG)."""

from __future__ import annotations

from pathlib import Path

import click

from chimp_worker.cli import AppContext, pass_app


@click.command()
@click.option("--barcode", required=True, help="The plate's barcode (Container.barcode).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write [default: plate-<barcode>.html].",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the plate schematic as a PNG (for e-mail and tickets).",
)
@click.option(
    "--inspection",
    "inspection_id",
    type=click.IntRange(min=1),
    help="Inspection drawn in the PNG [default: the latest].",
)
@click.option(
    "--thumbnail-size",
    type=click.IntRange(64, 2048),
    default=384,
    show_default=True,
    help="Longest side of the embedded drop pictures, in pixels.",
)
@click.option("--no-images", is_flag=True, help="Leave the drop pictures out (a smaller file).")
@pass_app
def report(
    app: AppContext,
    barcode: str,
    out: Path | None,
    png: Path | None,
    inspection_id: int | None,
    thumbnail_size: int,
    no_images: bool,
) -> None:
    """Write a plate overview: the plate schematic coloured red to green by P(Crystals) (as in
    the CHiMP paper's Figure 3), an inspection selector for the time course, and for each drop
    its picture with crystal targets, detection boxes and the dispense point.

    The HTML file needs no network and no other file: open it in any browser, or attach it.
    Pictures are read the way the worker reads them (CHIMP_IMAGE_ROOTS, CHIMP_IMAGE_PATH_MAP or
    CHIMP_IMAGE_URL_TEMPLATE).

    \b
    Example:
      chimp-worker report --barcode CQX-0001
      chimp-worker report --barcode CQX-0001 --out /tmp/cqx.html --png /tmp/cqx.png
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from chimp_worker.errors import ConfigError
    from chimp_worker.ispyb import queries
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.report import write_html, write_png
    from chimp_worker.report.build import ImageLoader, build_plate_report, make_image_loader

    settings = app.settings()
    out = out or Path(f"plate-{_safe_name(barcode)}.html")
    loader: ImageLoader | None = None
    if not no_images:
        try:
            loader = make_image_loader(settings, thumbnail_size)
        except ConfigError as error:
            click.echo(f"note: drop pictures left out: {error}", err=True)

    engine = make_engine(settings.database_url, settings.database_connect_args)
    try:
        factory = make_session_factory(engine)
        plate = queries.find_plate(factory, barcode=barcode)
        with Progress(
            TextColumn("building report"),
            BarColumn(),
            MofNCompleteColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task("drops", total=None)
            data = build_plate_report(
                factory,
                plate,
                load_image=loader,
                thumbnail_size=thumbnail_size,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        engine.dispose()
    if inspection_id is not None and inspection_id not in {
        i.containerInspectionId for i in data.inspections
    }:
        raise click.BadParameter(
            f"inspection {inspection_id} is not a Completed inspection of plate {barcode}",
            param_hint="--inspection",
        )
    write_html(data, out)
    click.echo(
        f"report: {out} ({out.stat().st_size // 1024} KiB, {len(data.inspections)} inspection(s))"
    )
    for note in data.notes:
        click.echo(f"note: {note}")
    if png is not None:
        if not data.inspections:
            raise click.UsageError(f"plate {barcode} has no Completed inspection to draw")
        write_png(data, png, inspection_id)
        click.echo(f"schematic: {png}")


def _safe_name(barcode: str) -> str:
    """A barcode as a file name: letters, digits, dot, dash and underscore only."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in barcode) or "plate"
