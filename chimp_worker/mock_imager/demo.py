"""The demo: the worker's whole job on one machine, with nothing but this checkout.

``run_demo`` creates (or reuses) an SQLite ISPyB in the output directory with the real
migrations, images a mock plate into it the way a facility's imager would, processes every
inspection with ``Pipeline`` -- the very code the RabbitMQ daemon and ``replay --local`` run
-- reading the images from disk or through a loopback HTTP server, and writes the staff's
plate overview (HTML and PNG). Because the plate is synthetic, every stored result is then
checked against the ground truth the generator kept.

With model files configured (``CHIMP_CLASSIFIER_PATH`` ...) the CHiMP models run; without,
the weight-free baseline does, under its own auto-score schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.config import Settings
from chimp_worker.ispyb.hit_queries import CoursePoint
from chimp_worker.ispyb.queries import DropResult
from chimp_worker.log import get_logger
from chimp_worker.mock_imager.plate import MockImage, MockPlate, create_plate
from chimp_worker.pipeline import ProgressCallback, WorkOutcome

log = get_logger(__name__)

DATABASE_FILE = "chimp-demo.sqlite"
IMAGES_DIR = "images"
CONTAINER_TYPE = "CrystalQuickX"
DROPS_PER_WELL = 2  # CrystalQuickX: 96 wells x 2 drops


@dataclass(frozen=True)
class DemoOptions:
    output_dir: Path = Path("chimp-worker-demo")
    flavour: str = "vmxi"
    wells: int = 12
    seed: int = 0
    inspections: int = 1
    image_size: tuple[int, int] | None = None
    faults: Mapping[int, str] = field(default_factory=dict)
    over_http: bool = False
    report: bool = True


@dataclass(frozen=True)
class DropCheck:
    """One processed drop's stored result, compared with what the image really shows."""

    image: MockImage
    result: DropResult
    drop_found: bool | None  # the stored drop detection's centre lies in the true drop
    dispense_in_drop: bool | None  # None: no dispense point stored
    dispense_on_crystal: bool | None
    targets_on_crystals: int
    crystals_found: int  # true crystals some target lies on (or near)

    @property
    def failure_as_expected(self) -> bool:
        """A bad image failed with its expected reason; a good image did not fail."""
        if self.image.expected_failure is None:
            return self.result.state == "done"
        return self.result.state == "failed" and (
            self.result.failureReason == self.image.expected_failure
        )


@dataclass(frozen=True)
class HitCheck:
    """One drop's time course as the worker called it, beside the ground truth."""

    location: int
    well: str
    drop: int
    truth_first: int | None  # the first inspection (1-based) whose image shows a crystal
    first_hit: int | None  # the first inspection the worker called a hit
    rank: int | None  # on the plate, by promise
    course: tuple[CoursePoint, ...]  # time order

    @property
    def agrees(self) -> bool:
        return self.truth_first == self.first_hit


@dataclass(frozen=True)
class HitSummary:
    """First hits against the truth, over a plate's drops."""

    drops: int
    crystal_drops: int  # drops the truth shows a crystal in, at some inspection
    exact: int  # first hit at the truth's first crystal (never and never counts too)
    crystal_exact: int  # of the crystal drops, first hit at the truth's first crystal
    early: int  # crystal drops called before the truth shows their crystal
    late: int  # crystal drops called after the truth's first crystal
    missed: int  # crystal drops never called
    false_hits: int  # drops without any crystal in the truth, called a hit

    @classmethod
    def of(cls, checks: tuple[HitCheck, ...]) -> HitSummary:
        crystal = [c for c in checks if c.truth_first is not None]
        called = [
            (c.first_hit, c.truth_first)
            for c in crystal
            if c.first_hit is not None and c.truth_first is not None
        ]
        return cls(
            drops=len(checks),
            crystal_drops=len(crystal),
            exact=sum(c.agrees for c in checks),
            crystal_exact=sum(c.agrees for c in crystal),
            early=sum(first_hit < truth_first for first_hit, truth_first in called),
            late=sum(first_hit > truth_first for first_hit, truth_first in called),
            missed=len(crystal) - len(called),
            false_hits=sum(c.truth_first is None and c.first_hit is not None for c in checks),
        )

    def __add__(self, other: HitSummary) -> HitSummary:
        return HitSummary(
            *(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True))
        )


@dataclass(frozen=True)
class DemoResult:
    database_url: str
    database_path: Path
    image_root: Path
    plate: MockPlate
    outcomes: tuple[WorkOutcome, ...]
    checks: tuple[DropCheck, ...]  # the latest inspection, in plate order
    analyser: str
    schema_name: str
    seconds: float
    report_html: Path | None = None
    report_png: Path | None = None
    image_url_template: str | None = None
    hit_checks: tuple[HitCheck, ...] = ()

    @property
    def hit_summary(self) -> HitSummary:
        return HitSummary.of(self.hit_checks)

    @property
    def failed(self) -> dict[int, str]:
        return {k: v for outcome in self.outcomes for k, v in outcome.failed.items()}

    @property
    def images_processed(self) -> int:
        return sum(len(outcome.written) + len(outcome.failed) for outcome in self.outcomes)


def demo_settings(settings: Settings, options: DemoOptions) -> Settings:
    """The user's settings, with the demo's own SQLite database and image root."""
    output = options.output_dir.resolve()
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{output / DATABASE_FILE}",
            "ispyb_credentials": None,
            "image_roots": [output / IMAGES_DIR],
            "image_path_map": {},
            "image_url_template": None,
            # A demo database is nobody's data-collection queue: show the baseline's targets.
            "baseline_writes_targets": True,
        }
    )


def run_demo(
    settings: Settings,
    options: DemoOptions,
    *,
    on_stage: Callable[[str, int], None] | None = None,
    on_image_created: Callable[[MockImage], None] | None = None,
    on_image_processed: ProgressCallback | None = None,
) -> DemoResult:
    """Set up, image, process, report and check one mock plate; see the module docstring.

    ``on_stage(name, total)`` announces "imaging" and "processing" with their image counts.
    """
    from chimp_worker.ispyb import schema
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.mock_imager.http_server import ImageServer
    from chimp_worker.wiring import make_pipeline

    started = time.perf_counter()
    local = demo_settings(settings, options)
    output = options.output_dir.resolve()
    image_root = output / IMAGES_DIR
    image_root.mkdir(parents=True, exist_ok=True)
    schema.upgrade(local.database_url, "all")

    engine = make_engine(local.database_url)
    try:
        factory = make_session_factory(engine)
        barcode = _next_barcode(factory)
        if on_stage is not None:
            on_stage("imaging", options.wells * DROPS_PER_WELL * options.inspections)
        plate = create_plate(
            factory,
            image_root,
            barcode=barcode,
            flavour=options.flavour,
            container_type=CONTAINER_TYPE,
            wells=options.wells,
            seed=options.seed,
            inspections=options.inspections,
            faults=dict(options.faults) or None,
            image_size=options.image_size,
            on_image=on_image_created,
        )
    finally:
        engine.dispose()

    with ExitStack() as stack:
        if options.over_http:
            server = stack.enter_context(ImageServer(image_root))
            local = local.model_copy(update={"image_url_template": server.url_template})
        pipeline = make_pipeline(local)
        stack.callback(pipeline.close)
        log.info(
            "demo_processing",
            barcode=barcode,
            analyser=pipeline.analyser.name,
            images=len(plate.images),
            source="http" if options.over_http else "filesystem",
        )
        if on_stage is not None:
            on_stage("processing", len(plate.images))
        outcomes = tuple(
            pipeline.process(inspection.containerInspectionId, progress=on_image_processed)
            for inspection in plate.inspections
        )
        analyser, schema_name = pipeline.analyser.name, pipeline.analyser.schema_name

    checks = check_against_truth(local, plate)
    hit_checks = check_hits_against_truth(local, plate)
    html = png = None
    if options.report:
        html, png = _write_report(local, plate, output)
    return DemoResult(
        database_url=local.database_url,
        database_path=output / DATABASE_FILE,
        image_root=image_root,
        plate=plate,
        outcomes=outcomes,
        checks=checks,
        analyser=analyser,
        schema_name=schema_name,
        seconds=time.perf_counter() - started,
        report_html=html,
        report_png=png,
        image_url_template=local.image_url_template,
        hit_checks=hit_checks,
    )


def check_against_truth(
    settings: Settings, plate: MockPlate, inspection_id: int | None = None
) -> tuple[DropCheck, ...]:
    """Read the stored results the way staff do and compare each with its ground truth."""
    from chimp_worker.ispyb import queries
    from chimp_worker.ispyb.database import DatabaseOptions, engine_for, make_session_factory
    from chimp_worker.mock_imager.measure import crystal_hit

    inspection_id = inspection_id or plate.latest.containerInspectionId
    engine = engine_for(DatabaseOptions.from_settings(settings))
    try:
        factory = make_session_factory(engine)
        found = queries.find_plate(factory, barcode=plate.barcode)
        results = queries.drop_results(factory, found, inspection_id, with_detections=True)
    finally:
        engine.dispose()
    images = {image.blSampleImageId: image for image in plate.images}
    checks = []
    for result in results:
        if result.blSampleImageId is None:
            continue
        image = images[result.blSampleImageId]
        truth = image.truth
        drop_centres = [d.centroid for d in result.detections if d.label == "drop" and d.centroid]
        drop_found = truth.drop_contains(*drop_centres[0]) if drop_centres else None
        point_x, point_y = result.dispenseX, result.dispenseY
        inside = on_crystal = None
        if point_x is not None and point_y is not None:
            inside = truth.drop_contains(point_x, point_y)
            on_crystal = truth.crystal_at(point_x, point_y) is not None
        targets = [(t.x, t.y) for t in result.targets]
        checks.append(
            DropCheck(
                image=image,
                result=result,
                drop_found=drop_found,
                dispense_in_drop=inside,
                dispense_on_crystal=on_crystal,
                targets_on_crystals=sum(
                    any(crystal_hit(c, x, y) for c in truth.crystals) for x, y in targets
                ),
                crystals_found=sum(
                    any(crystal_hit(c, x, y) for x, y in targets) for c in truth.crystals
                ),
            )
        )
    return tuple(checks)


def check_hits_against_truth(settings: Settings, plate: MockPlate) -> tuple[HitCheck, ...]:
    """Each drop's first hit in the worker's tables against its first true crystal."""
    from chimp_worker.ispyb.database import DatabaseOptions, engine_for, make_session_factory
    from chimp_worker.ispyb.hit_queries import HitFilters, course_points, find_hits

    engine = engine_for(DatabaseOptions.from_settings(settings))
    try:
        factory = make_session_factory(engine)
        rows = {
            row.blSampleId: row
            for row in find_hits(factory, HitFilters(barcode=plate.barcode, all_drops=True))
        }
        points = course_points(factory, [plate.containerId])
    finally:
        engine.dispose()
    first_images = {image.location: image for image in plate.inspections[0].images}
    checks = []
    for sample_id, location in zip(plate.blSampleIds, plate.locations, strict=True):
        row = rows.get(sample_id)
        image = first_images[location]
        checks.append(
            HitCheck(
                location=location,
                well=image.well,
                drop=image.drop,
                truth_first=plate.first_crystal_inspection(location),
                first_hit=None if row is None else row.firstHitInspection,
                rank=None if row is None else row.rank,
                course=tuple(points.get(sample_id, ())),
            )
        )
    return tuple(checks)


def _write_report(settings: Settings, plate: MockPlate, output: Path) -> tuple[Path, Path]:
    from chimp_worker.images import ImageOptions
    from chimp_worker.ispyb import queries
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.report import write_html, write_png
    from chimp_worker.report.build import (
        build_plate_report,
        make_image_linker,
        make_image_loader,
    )

    images = ImageOptions.from_settings(settings)
    engine = make_engine(settings.database_url)
    try:
        factory = make_session_factory(engine)
        found = queries.find_plate(factory, barcode=plate.barcode)
        report = build_plate_report(
            factory,
            found,
            load_image=make_image_loader(images, 384),
            link_image=make_image_linker(images),
            thumbnail_size=384,
        )
    finally:
        engine.dispose()
    html = write_html(report, output / f"plate-{plate.barcode}.html")
    png = write_png(report, output / f"plate-{plate.barcode}.png", None)
    return Path(html), Path(png)


def _next_barcode(factory: sessionmaker[Session]) -> str:
    """DEMO-0001, DEMO-0002...: each run of the demo adds a plate to the same database."""
    from chimp_worker.ispyb import tables as t
    from chimp_worker.ispyb.database import transaction

    with transaction(factory) as session:
        count = session.scalar(
            select(func.count()).select_from(t.Container).where(t.Container.barcode.like("DEMO-%"))
        )
    return f"DEMO-{int(count or 0) + 1:04d}"
