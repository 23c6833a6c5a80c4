"""Building ISPyB rows and analyses in tests: a small plate, an analysis, a row snapshot.

Used by the data layer's tests and by anyone who needs a plate without the mock imager.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import (
    CHIMP_SCHEMA,
    CrystalTarget,
    Detection,
    DispensePoint,
    DispenseStatus,
    ImageAnalysis,
    ModelRef,
)
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import WorkerBase
from chimp_worker.mock_imager.registration import register_plate

CLASSIFIER = ModelRef("classifier", "convnext_tiny", "a" * 64)
DETECTOR = ModelRef("xchem_detector", "maskrcnn_resnet50_fpn", "b" * 64)


@dataclass(frozen=True)
class Plate:
    containerId: int
    inspectionId: int
    sampleIds: tuple[int, ...]
    imageIds: tuple[int, ...]


def add_plate(factory: sessionmaker[Session], barcode: str = "CQX-0001", drops: int = 4) -> Plate:
    """Container, one BLSample and one BLSampleImage per drop, one Completed inspection; the
    plate registered in visit mx1234-1 (on a facility's schema with dewar and crystal)."""
    with factory.begin() as session:
        registration = register_plate(session, "mx1234-1", barcode)
        container = t.Container(
            barcode=barcode,
            containerType="CrystalQuickX",
            containerTypeId=14,
            sessionId=registration.sessionId,
            dewarId=registration.dewarId,
        )
        session.add(container)
        session.flush()
        inspection = t.ContainerInspection(
            containerId=container.containerId,
            inspectionTypeId=1,
            state="Completed",
            completedTimeStamp=datetime.datetime(2024, 5, 1, 12, 0),
        )
        session.add(inspection)
        session.flush()
        samples, images = [], []
        for drop in range(1, drops + 1):
            sample = t.BLSample(
                containerId=container.containerId,
                crystalId=registration.crystalId,
                name=f"d{drop}",
                location=str(drop),
            )
            session.add(sample)
            session.flush()
            image = t.BLSampleImage(
                blSampleId=sample.blSampleId,
                containerInspectionId=inspection.containerInspectionId,
                imageFullPath=f"/dls/imaging/{container.containerId}/{drop}.jpg",
                micronsPerPixelX=2.5,
                micronsPerPixelY=2.5,
                blTimeStamp=datetime.datetime(2024, 5, 1, 12, drop),
            )
            session.add(image)
            session.flush()
            samples.append(sample.blSampleId)
            images.append(image.blSampleImageId)
        return Plate(
            container.containerId, inspection.containerInspectionId, tuple(samples), tuple(images)
        )


def make_analysis(
    *,
    targets: Sequence[tuple[int, int]] = ((100, 40), (30, 200)),
    probabilities: Mapping[str, float] | None = None,
    dispense: tuple[int, int] | None = (60, 120),
    schema: str = CHIMP_SCHEMA,
    analyser: str = "chimp",
    timings: Mapping[str, float] | None = None,
    models: tuple[ModelRef, ...] = (CLASSIFIER, DETECTOR),
) -> ImageAnalysis:
    """An analysis with one crystal detection per target plus one drop detection."""
    if probabilities is None:
        probabilities = {"clear": 0.1, "crystals": 0.7, "other": 0.05, "precipitate": 0.15}
    detections = [
        Detection("crystal", 0.9 - 0.1 * i, (x - 5.0, y - 5.0, x + 5.0, y + 5.0), None, 100, (x, y))
        for i, (x, y) in enumerate(targets)
    ]
    detections.append(Detection("drop", 0.95, (10.0, 10.0, 300.0, 250.0), None, 50_000, (155, 130)))
    crystal_targets = tuple(
        CrystalTarget(x, y, detections[i].score, i) for i, (x, y) in enumerate(targets)
    )
    point = (
        DispensePoint(DispenseStatus.NO_DROP, drops_seen=0)
        if dispense is None
        else DispensePoint(DispenseStatus.OK, dispense[0], dispense[1], 42.5, drops_seen=1)
    )
    return ImageAnalysis(
        analyser=analyser,
        schema_name=schema,
        models=models,
        width=320,
        height=260,
        probabilities=probabilities,
        detections=tuple(detections),
        crystal_targets=crystal_targets,
        dispense=point,
        timings_ms=dict(timings or {"model": 812.5, "fetch": 3.25}),
    )


def snapshot(factory: sessionmaker[Session]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table the writer touches, ordered by primary key."""
    tables = [
        t.BLSampleImageHasAutoScoreClass.__table__,
        t.BLSubSample.__table__,
        t.Position.__table__,
        t.BLSamplePosition.__table__,
        *WorkerBase.metadata.sorted_tables,
    ]
    with factory() as session:
        return {
            table.name: [
                tuple(row)
                for row in session.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in tables
        }
