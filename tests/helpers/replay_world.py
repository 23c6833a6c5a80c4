"""A backlog to replay: two mock plates, several inspections, injected failures, an old model.

RPL-A (visit mx1000-1), 2 wells = 4 drops, 3 inspections at 2024-01-01 00:00, 12:00, 24:00
  inspection 0: processed with the current analyser                    -> up to date
  inspection 1: processed; drop 2's file is corrupt                    -> 1 failed image
  inspection 2: never processed                                        -> 4 unprocessed
RPL-B (visit mx999-2), 1 well = 2 drops, 1 inspection at 2024-02-01
  inspection 0: processed with an older model file                     -> 2 model changed
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from helpers.analysers import PixelStatsAnalyser
from helpers.plates import plate_settings, small_plate
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import Analyser, DecodedImage, ImageAnalysis, ModelRef
from chimp_worker.config import Settings
from chimp_worker.images import ImageOptions, make_image_source
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import (
    ChimpDetection,
    ChimpImageModel,
    ChimpImageResult,
    ChimpInspection,
)
from chimp_worker.mock_imager.plate import MockPlate
from chimp_worker.pipeline import Pipeline

OLD_MODEL = ModelRef("baseline", "pixel-stats-old", hashlib.sha256(b"old weights").hexdigest())


class OldModelAnalyser(PixelStatsAnalyser):
    """The same results, attributed to an older model file."""

    models = (OLD_MODEL,)

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        return [replace(result, models=self.models) for result in super().analyse(images)]


@dataclass
class ReplayWorld:
    url: str
    image_root: Path
    settings: Settings
    factory: sessionmaker[Session]
    plate_a: MockPlate
    plate_b: MockPlate
    make_pipeline: Callable[[Analyser], Pipeline]

    @property
    def a(self) -> tuple[int, int, int]:
        first, second, third = self.plate_a.containerInspectionIds
        return first, second, third

    @property
    def b(self) -> int:
        return self.plate_b.containerInspectionIds[0]

    @property
    def all_image_ids(self) -> tuple[int, ...]:
        return self.plate_a.blSampleImageIds + self.plate_b.blSampleImageIds

    def repair_corrupt_image(self) -> None:
        """The facility re-exports the corrupt file (a copy of the same drop's earlier image)."""
        broken = next(image for image in self.plate_a.inspections[1].images if image.fault)
        good = next(
            image
            for image in self.plate_a.inspections[0].images
            if image.location == broken.location
        )
        shutil.copyfile(good.imageFullPath, broken.imageFullPath)


def build_world(url: str, image_root: Path, current: Analyser, **settings: object) -> ReplayWorld:
    """Create both plates and process them as the module docstring says, with ``current``."""
    plate_a = small_plate(
        url,
        image_root,
        barcode="RPL-A",
        wells=2,
        inspections=3,
        faults={2: "corrupt"},
        fault_inspections={1},
        visit="mx1000-1",
        start=dt.datetime(2024, 1, 1),
    )
    plate_b = small_plate(
        url, image_root, barcode="RPL-B", wells=1, visit="mx999-2", start=dt.datetime(2024, 2, 1)
    )
    config = plate_settings(url, image_root, **settings)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    source = make_image_source(ImageOptions.from_settings(config))

    def make_pipeline(analyser: Analyser) -> Pipeline:
        return Pipeline(factory, source, analyser, batch_size=2)

    now = make_pipeline(current)
    first, second, _ = plate_a.containerInspectionIds
    now.process(first)
    now.process(second)
    make_pipeline(OldModelAnalyser()).process(plate_b.containerInspectionIds[0])
    return ReplayWorld(url, image_root, config, factory, plate_a, plate_b, make_pipeline)


def row_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    """Rows per table the writer touches; with one result per image these are exact."""
    tables = {
        "results": ChimpImageResult,
        "models": ChimpImageModel,
        "detections": ChimpDetection,
        "scores": t.BLSampleImageHasAutoScoreClass,
        "positions": t.Position,
        "dispense": t.BLSamplePosition,
        "inspections_done": ChimpInspection,
    }
    counts = {}
    with factory() as session:
        for name, table in tables.items():
            query = select(func.count()).select_from(table)
            if table is ChimpInspection:
                query = query.where(ChimpInspection.state == "done")
            counts[name] = session.scalar(query) or 0
        counts["auto_subsamples"] = (
            session.scalar(
                select(func.count())
                .select_from(t.BLSubSample)
                .where(t.BLSubSample.source == "auto")
            )
            or 0
        )
        counts["done"] = (
            session.scalar(
                select(func.count())
                .select_from(ChimpImageResult)
                .where(ChimpImageResult.state == "done")
            )
            or 0
        )
    return counts


def expected_counts(images: int, inspections: int, samples: int) -> dict[str, int]:
    """Every image done by PixelStatsAnalyser: 4 scores, 1 target each; one dispense point per
    sample (SynchWeb shows one: the worker's, from the sample's latest image)."""
    return {
        "results": images,
        "models": images,
        "detections": images,
        "scores": 4 * images,
        "positions": images,
        "dispense": samples,
        "inspections_done": inspections,
        "auto_subsamples": images,
        "done": images,
    }
