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
@click.option(
    "--no-pictures",
    "--no-images",
    "no_pictures",
    is_flag=True,
    help="Leave the drop pictures out (a smaller file; no image roots needed).",
)
@click.option(
    "--colour-scale",
    type=click.Choice(["viridis", "red-green"]),
    default="viridis",
    show_default=True,
    help="P(Crystals) colours: viridis reads for every colour vision; red-green is the "
    "paper's Figure 3.",
)
@click.option(
    "--image-link",
    metavar="TEMPLATE",
    help="Link each drop to its full-size image here, e.g. "
    "https://images.example/{imageFullPath} or .../{blSampleImageId} "
    "[default: the URL or file the worker reads].",
)
@pass_app
def report(
    app: AppContext,
    barcode: str,
    out: Path | None,
    png: Path | None,
    inspection_id: int | None,
    thumbnail_size: int,
    no_pictures: bool,
    colour_scale: str,
    image_link: str | None,
) -> None:
    """Write a plate overview: the plate schematic coloured by P(Crystals) (viridis, or red to
    green as in the CHiMP paper's Figure 3), a view of the new crystal hits of each inspection,
    the drops ranked by promise, an inspection selector, and for each drop its picture with
    numbered crystal targets, detection boxes and the dispense point, a legend, a link to the
    full-size image, and the strip of its pictures across inspections with P(crystal) and
    crystal count over time.

    The HTML file needs no network and no other file: open it in any browser, or attach it.
    Pictures are read the way the worker reads them (CHIMP_IMAGE_ROOTS, CHIMP_IMAGE_PATH_MAP or
    CHIMP_IMAGE_URL_TEMPLATE); when they cannot be read the command fails (exit 2 for missing
    settings, 1 for unreadable files, after writing the report) unless --no-pictures is given.

    \b
    Example:
      chimp-worker report --barcode CQX-0001
      chimp-worker report --barcode CQX-0001 --out /tmp/cqx.html --png /tmp/cqx.png
      chimp-worker report --barcode CQX-0001 --no-pictures --colour-scale red-green
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from chimp_worker.errors import ConfigError, PicturesUnreadableError
    from chimp_worker.images import ImageOptions
    from chimp_worker.ispyb import queries
    from chimp_worker.report import write_html, write_png
    from chimp_worker.report.build import (
        ImageLinker,
        ImageLoader,
        build_plate_report,
        make_image_linker,
        make_image_loader,
    )
    from chimp_worker.wiring import make_database

    settings = app.settings()
    out = out or Path(f"plate-{_safe_name(barcode)}.html")
    loader: ImageLoader | None = None
    images = ImageOptions.from_settings(settings)
    linker: ImageLinker | None = make_image_linker(images, image_link)
    if not no_pictures:
        try:
            loader = make_image_loader(images, thumbnail_size)
        except ConfigError as error:
            raise ConfigError(
                f"drop pictures cannot be read: {error}; or pass --no-pictures"
            ) from None

    engine, factory = make_database(settings)
    try:
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
                link_image=linker,
                thumbnail_size=thumbnail_size,
                colour_scale=colour_scale,
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
    if data.unreadable_pictures:
        raise PicturesUnreadableError(
            f"{data.unreadable_pictures} drop picture(s) could not be read, so {out} was written "
            "without them (see the note above); fix CHIMP_IMAGE_ROOTS / CHIMP_IMAGE_PATH_MAP, "
            "or pass --no-pictures for a report without pictures"
        )


def _safe_name(barcode: str) -> str:
    """A barcode as a file name: letters, digits, dot, dash and underscore only."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in barcode) or "plate"
