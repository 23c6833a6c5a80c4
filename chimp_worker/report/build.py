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
from chimp_worker.report.model import (
    DetectionMark,
    DispenseMark,
    DropReport,
    InspectionReport,
    PlateReport,
    TargetMark,
)
from chimp_worker.report.thumbnails import thumbnail_data_uri

if TYPE_CHECKING:
    from chimp_worker.config import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Picture:
    """A drop picture for the report: pixels (maybe reduced) and the original image size."""

    pixels: np.ndarray
    width: int
    height: int


# (imageFullPath, blSampleImageId) -> Picture; raises ImageError when it cannot be used.
ImageLoader = Callable[[str, int], Picture]


def make_image_loader(settings: Settings, max_side: int) -> ImageLoader:
    """Read pictures the way the worker does (roots, path map, HTTP template, limits).

    From a filesystem source a JPEG is decoded at a reduced scale (libjpeg's DCT scaling via
    Pillow's ``draft``): about ten times faster than a full decode, which matters for a
    report of 288 drops times several inspections. Over HTTP the full image is fetched.
    """
    from chimp_worker.images import FilesystemSource, make_image_source

    source = make_image_source(settings)
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
                if width * height > settings.image_max_pixels:
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


def _drop_report(
    drop: DropResult,
    load_image: ImageLoader | None,
    thumbnail_size: int,
    counters: _Counters,
) -> DropReport:
    width, height = drop.imageWidth, drop.imageHeight
    image_uri = None
    if load_image is not None and drop.imageFullPath and drop.blSampleImageId is not None:
        try:
            picture = load_image(drop.imageFullPath, drop.blSampleImageId)
        except ImageError as error:
            counters.unreadable += 1
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
        targets=tuple(TargetMark(t.x, t.y, t.blSubSampleId, t.kept) for t in drop.targets),
        detections=tuple(DetectionMark(d.label, d.score, d.box) for d in drop.detections),
        dispense=dispense,
        image_width=width,
        image_height=height,
        image_uri=image_uri,
    )


def build_plate_report(
    session_factory: sessionmaker[Session],
    plate: Plate,
    *,
    load_image: ImageLoader | None = None,
    thumbnail_size: int = 384,
    on_progress: Callable[[int, int], None] | None = None,
) -> PlateReport:
    """Every Completed inspection of the plate (oldest first), each drop with its result.

    Drops whose BLSample.location does not fit the plate's geometry are left out and named in
    the report's notes; unreadable images are counted there too.
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
    counters = _Counters()
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
            drops.append(_drop_report(drop, load_image, thumbnail_size, counters))
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
        notes.append(f"{counters.unreadable} image(s) could not be read and are not shown")
    if BASELINE_SCHEMA in schemas:
        notes.append(
            f"Scores from the weight-free baseline analyser ({BASELINE_SCHEMA}), "
            "not from the CHiMP models."
        )
    return PlateReport(
        barcode=plate.barcode or f"container {plate.containerId}",
        layout=plate.layout,
        inspections=tuple(inspections),
        containerId=plate.containerId,
        container_type=plate.container_type,
        generated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        analysers=tuple(sorted(schemas)),
        notes=tuple(notes),
    )
