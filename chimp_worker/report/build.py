"""Fill a ``PlateReport`` from the database: the adapter between the staff queries and the
renderers. Images are fetched through the worker's own ``ImageSource`` (same roots, path map
and limits as the daemon) and embedded as small JPEGs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.errors import (
    ConfigError,
    ImageCorruptError,
    ImageError,
    ImageMissingError,
    ImageTooLargeError,
)
from chimp_worker.ispyb.queries import (
    DropResult,
    InspectionSummary,
    Plate,
    drop_results,
    plate_inspections,
)
from chimp_worker.log import get_logger
from chimp_worker.report.colours import DEFAULT_SCALE
from chimp_worker.report.model import (
    CourseMark,
    DetectionMark,
    DispenseMark,
    DropRank,
    DropReport,
    InspectionReport,
    PlateReport,
    TargetMark,
)
from chimp_worker.report.thumbnails import thumbnail_data_uri

if TYPE_CHECKING:
    from chimp_worker.images import ImageOptions

log = get_logger(__name__)


@dataclass(frozen=True)
class Picture:
    """A drop picture for the report: pixels (maybe reduced) and the original image size."""

    pixels: np.ndarray
    width: int
    height: int


# (imageFullPath, blSampleImageId) -> Picture; raises ImageError when it cannot be used.
ImageLoader = Callable[[str, int], Picture]
# (imageFullPath, blSampleImageId) -> where a browser opens the full-size image, or None.
ImageLinker = Callable[[str, int], str | None]


def make_image_linker(images: ImageOptions, template: str | None = None) -> ImageLinker:
    """Links to the full-size images: ``template`` (``{imageFullPath}``, ``{blSampleImageId}``,
    e.g. a facility's image server), else the URL the worker fetches from, else a ``file:`` URI
    of the image under the image roots (None for one outside them)."""
    from urllib.parse import quote

    from chimp_worker.images import FilesystemSource, HttpSource, make_image_source

    if template is not None:
        if "{imageFullPath}" not in template and "{blSampleImageId}" not in template:
            raise ConfigError(
                f"image link template {template!r}: must contain {{imageFullPath}} or "
                "{blSampleImageId}"
            )

        def from_template(path: str, image_id: int) -> str | None:
            return template.replace("{imageFullPath}", quote(path.lstrip("/"))).replace(
                "{blSampleImageId}", str(image_id)
            )

        return from_template
    try:
        source = make_image_source(images)
    except ConfigError:
        return lambda path, image_id: None
    if isinstance(source, HttpSource):
        return lambda path, image_id: source.url_for(path, image_id)
    if isinstance(source, FilesystemSource):

        def file_uri(path: str, image_id: int) -> str | None:
            try:
                return source.local_path(path).as_uri()
            except ImageError:
                return None

        return file_uri
    return lambda path, image_id: None


def make_image_loader(images: ImageOptions, max_side: int) -> ImageLoader:
    """Read pictures the way the worker does (roots, path map, HTTP template, limits).

    From a filesystem source a JPEG is decoded at a reduced scale (libjpeg's DCT scaling via
    Pillow's ``draft``): about ten times faster than a full decode, which matters for a
    report of 288 drops times several inspections. Over HTTP the full image is fetched.
    """
    from chimp_worker.images import FilesystemSource, make_image_source

    source = make_image_source(images)
    if not isinstance(source, FilesystemSource):

        def fetch(path: str, image_id: int) -> Picture:
            decoded = source.fetch(path, image_id)
            return Picture(decoded.pixels, decoded.width, decoded.height)

        return fetch

    def read_reduced(path: str, image_id: int) -> Picture:
        del image_id
        local = source.local_path(path)
        try:
            with Image.open(local) as picture:
                width, height = picture.size
                if width * height > images.max_pixels:
                    raise ImageTooLargeError(f"{path}: {width} x {height} pixels is too large")
                picture.draft("RGB", (max_side, max_side))
                pixels = np.asarray(picture.convert("RGB"))
        except FileNotFoundError:
            raise ImageMissingError(f"{path}: no such file ({local})") from None
        except (UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise ImageCorruptError(f"{path}: {error}") from None
        except OSError as error:
            raise ImageCorruptError(f"{path}: {error}") from None
        return Picture(pixels, width, height)

    return read_reduced


@dataclass
class _Counters:
    embedded: int = 0
    unreadable: int = 0
    unreadable_paths: list[str] | None = None


def _drop_report(
    drop: DropResult,
    load_image: ImageLoader | None,
    thumbnail_size: int,
    counters: _Counters,
    link_image: ImageLinker | None = None,
) -> DropReport:
    width, height = drop.imageWidth, drop.imageHeight
    image_uri = None
    if load_image is not None and drop.imageFullPath and drop.blSampleImageId is not None:
        try:
            picture = load_image(drop.imageFullPath, drop.blSampleImageId)
        except ImageError as error:
            counters.unreadable += 1
            if counters.unreadable_paths is not None and len(counters.unreadable_paths) < 5:
                counters.unreadable_paths.append(f"{drop.imageFullPath} ({error.reason})")
            log.warning(
                "report_image_unreadable",
                blsample_image_id=drop.blSampleImageId,
                reason=error.reason,
                detail=str(error),
            )
        else:
            image_uri = thumbnail_data_uri(picture.pixels, max_side=thumbnail_size)
            width, height = picture.width, picture.height
            counters.embedded += 1
    link = None
    if link_image is not None and drop.imageFullPath and drop.blSampleImageId is not None:
        link = link_image(drop.imageFullPath, drop.blSampleImageId)
    dispense = None
    if drop.dispenseStatus is not None or drop.dispense is not None:
        dispense = DispenseMark(
            drop.dispenseStatus or "-", drop.dispenseX, drop.dispenseY, drop.dispenseBy
        )
    return DropReport(
        location=drop.location or 0,
        blSampleId=drop.blSampleId,
        blSampleImageId=drop.blSampleImageId,
        state=drop.state,
        failure_reason=drop.failureReason,
        schema_name=drop.schemaName,
        probabilities=dict(drop.probabilities),
        targets=tuple(
            TargetMark(t.x, t.y, t.blSubSampleId, kept=t.kept, score=t.score) for t in drop.targets
        ),
        detections=tuple(DetectionMark(d.label, d.score, d.box) for d in drop.detections),
        dispense=dispense,
        image_width=width,
        image_height=height,
        image_uri=image_uri,
        full_image_url=link,
    )


def build_plate_report(
    session_factory: sessionmaker[Session],
    plate: Plate,
    *,
    load_image: ImageLoader | None = None,
    link_image: ImageLinker | None = None,
    thumbnail_size: int = 384,
    colour_scale: str = DEFAULT_SCALE,
    on_progress: Callable[[int, int], None] | None = None,
) -> PlateReport:
    """Every Completed inspection of the plate (oldest first), each drop with its result, and
    each drop's time course and rank (from the worker's ``chimp_drop_*`` tables).

    Drops whose BLSample.location does not fit the plate's geometry are left out and named in
    the report's notes; unreadable images are counted there too (``unreadable_pictures``).
    """
    summaries: list[InspectionSummary] = [
        s for s in plate_inspections(session_factory, plate) if s.state == "Completed"
    ]
    fetched = [
        (
            summary,
            drop_results(
                session_factory, plate, summary.containerInspectionId, with_detections=True
            ),
        )
        for summary in summaries
    ]
    total = sum(len(drops) for _, drops in fetched)
    counters = _Counters(unreadable_paths=[])
    misplaced: list[str] = []
    inspections = []
    schemas: set[str] = set()
    done = 0
    for summary, results in fetched:
        drops = []
        for drop in results:
            done += 1
            if drop.location is None or not 1 <= drop.location <= plate.layout.capacity:
                misplaced.append(f"BLSample {drop.blSampleId}")
                continue
            drops.append(_drop_report(drop, load_image, thumbnail_size, counters, link_image))
            if drop.schemaName:
                schemas.add(drop.schemaName)
            if on_progress is not None:
                on_progress(done, total)
        inspections.append(
            InspectionReport(
                containerInspectionId=summary.containerInspectionId,
                state=summary.state,
                completed=summary.completed or summary.imaged,
                processing=summary.processing,
                drops=tuple(drops),
            )
        )
    notes = []
    if misplaced:
        shown = ", ".join(sorted(set(misplaced))[:10])
        notes.append(f"{len(set(misplaced))} sample(s) with a location outside the plate: {shown}")
    if counters.unreadable:
        shown = "; ".join(counters.unreadable_paths or [])
        notes.append(
            f"{counters.unreadable} image(s) could not be read and are not shown, e.g. {shown}"
        )
    if BASELINE_SCHEMA in schemas:
        notes.append(
            f"Scores from the weight-free baseline analyser ({BASELINE_SCHEMA}), "
            "not from the CHiMP models."
        )
    courses, ranking = _time_courses(session_factory, plate)
    return PlateReport(
        barcode=plate.barcode or f"container {plate.containerId}",
        layout=plate.layout,
        inspections=tuple(inspections),
        containerId=plate.containerId,
        container_type=plate.container_type,
        generated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        analysers=tuple(sorted(schemas)),
        notes=tuple(notes),
        colour_scale=colour_scale,
        courses=courses,
        ranking=ranking,
        unreadable_pictures=counters.unreadable,
    )


def _time_courses(
    session_factory: sessionmaker[Session], plate: Plate
) -> tuple[dict[int, tuple[CourseMark, ...]], tuple[DropRank, ...]]:
    """Each drop's course (by location) and the plate's drops ranked by promise."""
    from chimp_worker.ispyb.hit_queries import HitFilters, course_points, find_hits

    rows = (
        [
            row
            for row in find_hits(session_factory, HitFilters(all_drops=True, barcode=plate.barcode))
            if row.containerId == plate.containerId
        ]
        if plate.barcode
        else []
    )
    points = course_points(session_factory, [plate.containerId])
    courses: dict[int, tuple[CourseMark, ...]] = {}
    ranking = []
    for row in rows:
        if row.location is None:
            continue
        try:
            location = int(row.location)
        except (TypeError, ValueError):
            continue
        courses[location] = tuple(
            CourseMark(
                p.containerInspectionId,
                p.inspectionNumber,
                p.pCrystal,
                p.crystalCount,
                p.score,
                p.isHit,
                p.crystalAreaUm2,
            )
            for p in points.get(row.blSampleId, ())
        )
        ranking.append(
            DropRank(
                location=location,
                rank=row.rank,
                promise=row.promise,
                is_hit=row.isHit,
                score=row.score,
                crystal_count=row.crystalCount,
                crystal_area_um2=row.crystalAreaUm2,
                first_hit_inspection_id=row.firstHitInspectionId,
                first_hit_number=row.firstHitInspection,
            )
        )
    return courses, tuple(sorted(ranking, key=lambda r: r.rank))
