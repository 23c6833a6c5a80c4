"""``chimp-worker mock-imager``: synthetic plate inspections, as a facility's imager makes them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import (
    flavour_option,
    image_faults_option,
    image_root_option,
    render_size_option,
    schedule_option,
    seed_option,
)

if TYPE_CHECKING:
    from chimp_worker.config import Settings
    from chimp_worker.mock_imager.imager import PlateRequest
    from chimp_worker.mock_imager.plate import MockInspection


@click.command("mock-imager")
@click.option("--barcode", help="Plate barcode (default: MOCK-<date and time>).")
@flavour_option(default="vmxi", help_text="vmxi: 2532x2028 greyscale; xchem: 1224x1024 colour.")
@click.option(
    "--container-type",
    default="CrystalQuickX",
    show_default=True,
    help="A ContainerType name: CrystalQuickX, MRC 2 Drop, SWISSCI 3 Drop.",
)
@click.option(
    "--wells", type=click.IntRange(1, 96), help="Image only the first N wells (default: all 96)."
)
@seed_option("Same seed, same plate.")
@schedule_option(30, "Inspections of the plate, crystals growing between them.")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait between the inspections of a schedule.",
)
@render_size_option(32, "Render WIDTHxHEIGHT instead of the imager's size.")
@image_faults_option(
    "Damage the image at a drop LOCATION: LOCATION=missing|truncated|corrupt|empty|not_image."
)
@image_root_option(
    "Where the visit directory goes (default: first CHIMP_IMAGE_ROOTS, else ./mock-images)."
)
@click.option(
    "--visit",
    default="mx23456-1",
    show_default=True,
    help="The visit the plate belongs to: an existing one is attached to, a new one is created "
    "(with its proposal) as the user office would.",
)
@click.option(
    "--publish", is_flag=True, help="Publish an inspection-completed event per inspection."
)
@click.option(
    "--serve",
    "serve_port",
    type=click.IntRange(0, 65535),
    help="Then serve the image root over HTTP on 127.0.0.1:PORT until Ctrl-C.",
)
@click.option(
    "--http-fault",
    type=click.Choice(["slow", "404", "503", "flaky", "truncated", "cut", "corrupt"]),
    help="With --serve: answer every request with this fault.",
)
@click.option(
    "--serve-only", is_flag=True, help="With --serve: serve the image root, create no plate."
)
@pass_app
def mock_imager(
    app: AppContext,
    barcode: str | None,
    flavour: str,
    container_type: str,
    wells: int | None,
    seed: int,
    inspections: int,
    interval_s: float,
    size: tuple[int, int] | None,
    faults: dict[int, str],
    image_root: Path | None,
    visit: str,
    publish: bool,
    serve_port: int | None,
    http_fault: str | None,
    serve_only: bool,
) -> None:
    """Create a plate the way a facility's imager does: ISPyB rows (Container, BLSamples, a
    ContainerInspection per scheduled inspection, BLSampleImages), JPEGs and thumbnails at
    {visit}/imaging/{containerId}/{containerInspectionId}/{blSampleImageId}.jpg, each
    inspection marked Completed and, with --publish, announced on RabbitMQ.

    The database needs the ISPyB core tables (`chimp-worker db upgrade --target all`); a worker
    reading the images from disk needs the image root in CHIMP_IMAGE_ROOTS.

    \b
    Example:
      chimp-worker db upgrade --target all
      chimp-worker mock-imager --barcode CQX-0001 --wells 8 --publish
      chimp-worker mock-imager --flavour xchem --schedule 3 --interval 60 --publish
      chimp-worker mock-imager --wells 2 --fault 1=truncated --fault 3=missing
      chimp-worker mock-imager --serve-only --serve 8080 --http-fault slow
    """
    from chimp_worker.log import configure_logging
    from chimp_worker.mock_imager.imager import PlateRequest

    settings = app.settings()
    configure_logging(settings.log_level, settings.log_format)
    default_root = settings.image_roots[0] if settings.image_roots else Path("mock-images")
    root = (image_root or default_root).resolve()
    if serve_only and serve_port is None:
        raise click.UsageError("--serve-only needs --serve PORT")
    if not serve_only:
        request = PlateRequest(
            barcode=barcode or f"MOCK-{dt.datetime.now():%Y%m%d-%H%M%S}",
            image_root=root,
            flavour=flavour,
            container_type=container_type,
            wells=wells,
            seed=seed,
            inspections=inspections,
            image_size=size,
            faults=faults,
            visit=visit,
        )
        _create(settings, request, publish=publish, interval_s=interval_s)
    if serve_port is not None:
        _serve(root, serve_port, http_fault)


def _create(settings: Settings, request: PlateRequest, *, publish: bool, interval_s: float) -> None:
    from chimp_worker.broker import BrokerOptions
    from chimp_worker.ispyb.database import DatabaseOptions
    from chimp_worker.mock_imager.imager import run_mock_imager

    def report(inspection: MockInspection, message_id: str | None) -> None:
        published = f", event {message_id} published" if message_id else ""
        click.echo(
            f"inspection {inspection.containerInspectionId} Completed: "
            f"{len(inspection.images)} images{published}"
        )

    try:
        plate = run_mock_imager(
            DatabaseOptions.from_settings(settings),
            request,
            broker=BrokerOptions.from_settings(settings) if publish else None,
            interval_s=interval_s,
            on_inspection=report,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    inspections = ", ".join(map(str, plate.containerInspectionIds))
    click.echo(
        f"plate {plate.barcode}: Container {plate.containerId} ({plate.container_type}, "
        f"{plate.flavour}), {len(plate.blSampleIds)} drops, inspections {inspections}"
    )
    click.echo(f"images under {plate.visit_dir / 'imaging' / str(plate.containerId)}")
    if not any(request.image_root.is_relative_to(r.resolve()) for r in settings.image_roots):
        click.echo(
            f"workers reading from disk need: CHIMP_IMAGE_ROOTS='[\"{request.image_root}\"]'"
        )


def _serve(root: Path, port: int, fault: str | None) -> None:
    from chimp_worker.mock_imager.http_server import ImageServer, ServerFaults

    server = ImageServer(root, port=port, faults=ServerFaults(everywhere=fault))
    click.echo(f"serving {root} on {server.base_url} (Ctrl-C stops)")
    click.echo(f"workers fetching over HTTP need: CHIMP_IMAGE_URL_TEMPLATE='{server.url_template}'")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
