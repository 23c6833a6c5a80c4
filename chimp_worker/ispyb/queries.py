"""Staff queries: read results the way SynchWeb's views do, plus the worker's own state.

ISPyB's tables are the truth staff act on, so everything shown comes from them:
probabilities through ContainerInspection -> BLSampleImage -> BLSampleImage_has_AutoScoreClass
-> BLSampleImageAutoScoreClass -> BLSampleImageAutoScoreSchema; crystal targets as the auto
BLSubSamples of an image; the dispense point SynchWeb shows, the sample's 'dispensing'
BLSamplePosition with the highest id, in every view. The worker's ``chimp_*`` tables add what
ISPyB has no column for: processing state, failure reasons, dispense status, detection boxes,
model checksums, and (``chimp_ispyb_row``) whether a row is the worker's or staff's and why
re-processing kept it.

"Latest" is SynchWeb's notion: per sample, the image with the highest blSampleImageId among
images of Completed inspections. The SQL lives in named constants, written to run unchanged on
MariaDB and SQLite, and docs/staff.md quotes it so staff can run it by hand.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import NotFoundError
from chimp_worker.ispyb.database import translate_db_errors
from chimp_worker.plate_layout import PlateLayout

# --- SQL (quoted in docs/staff.md) -------------------------------

PLATE_SQL = """
SELECT c.containerId, c.barcode, c.containerType, c.sessionId,
       ct.name AS typeName, ct.capacity, ct.wellPerRow, ct.dropPerWellX, ct.dropPerWellY,
       ct.wellDrop, p.proposalCode, p.proposalNumber, bs.visit_number
FROM Container c
LEFT JOIN ContainerType ct
       ON ct.containerTypeId = c.containerTypeId
       OR (c.containerTypeId IS NULL AND ct.name = c.containerType)
LEFT JOIN BLSession bs ON bs.sessionId = c.sessionId
LEFT JOIN Proposal p ON p.proposalId = bs.proposalId
"""

INSPECTIONS_SQL = """
SELECT ci.containerInspectionId, ci.state, ci.completedTimeStamp, ci.blTimeStamp,
       it.name AS inspectionType, w.state AS processing,
       COUNT(si.blSampleImageId) AS images,
       SUM(CASE WHEN r.state = 'done' THEN 1 ELSE 0 END) AS done,
       SUM(CASE WHEN r.state = 'failed' THEN 1 ELSE 0 END) AS failed
FROM ContainerInspection ci
LEFT JOIN InspectionType it ON it.inspectionTypeId = ci.inspectionTypeId
LEFT JOIN BLSampleImage si ON si.containerInspectionId = ci.containerInspectionId
LEFT JOIN chimp_image_result r ON r.blSampleImageId = si.blSampleImageId
LEFT JOIN chimp_inspection w ON w.containerInspectionId = ci.containerInspectionId
WHERE ci.containerId = :containerId
GROUP BY ci.containerInspectionId, ci.state, ci.completedTimeStamp, ci.blTimeStamp, it.name,
         w.state
ORDER BY ci.containerInspectionId
"""

# Per sample, the image of the latest Completed inspection (SynchWeb's "latest image").
LATEST_IMAGES_SQL = """
SELECT si.blSampleId, MAX(si.blSampleImageId) AS blSampleImageId
FROM BLSampleImage si
JOIN ContainerInspection ci ON ci.containerInspectionId = si.containerInspectionId
WHERE ci.containerId = :containerId AND ci.state = 'Completed'
GROUP BY si.blSampleId
"""

# Per sample, its image in one inspection.
INSPECTION_IMAGES_SQL = """
SELECT si.blSampleId, MAX(si.blSampleImageId) AS blSampleImageId
FROM BLSampleImage si
WHERE si.containerInspectionId = :containerInspectionId
GROUP BY si.blSampleId
"""

# Every drop (BLSample) of the plate with one chosen image each ({images} is one of the two
# queries above) and the worker's state for that image.
DROPS_SQL = """
SELECT s.blSampleId, s.location, s.name AS sampleName,
       si.blSampleImageId, si.containerInspectionId, si.imageFullPath,
       si.micronsPerPixelX, si.micronsPerPixelY,
       r.state, r.failureReason, r.analyser, r.schemaName, r.dispenseStatus,
       r.dispenseX, r.dispenseY, r.blSamplePositionId, r.imageWidth, r.imageHeight
FROM BLSample s
LEFT JOIN ({images}) chosen ON chosen.blSampleId = s.blSampleId
LEFT JOIN BLSampleImage si ON si.blSampleImageId = chosen.blSampleImageId
LEFT JOIN chimp_image_result r ON r.blSampleImageId = si.blSampleImageId
WHERE s.containerId = :containerId
ORDER BY s.location + 0, s.blSampleId
"""

# The class probabilities of images, along SynchWeb's join path.
PROBABILITIES_SQL = """
SELECT si.blSampleImageId, sch.schemaName, cls.scoreClass, h.probability
FROM ContainerInspection ci
JOIN BLSampleImage si ON si.containerInspectionId = ci.containerInspectionId
JOIN BLSampleImage_has_AutoScoreClass h ON h.blSampleImageId = si.blSampleImageId
JOIN BLSampleImageAutoScoreClass cls
  ON cls.blSampleImageAutoScoreClassId = h.blSampleImageAutoScoreClassId
JOIN BLSampleImageAutoScoreSchema sch
  ON sch.blSampleImageAutoScoreSchemaId = cls.blSampleImageAutoScoreSchemaId
WHERE si.blSampleImageId IN :imageIds
"""

# Auto crystal targets (queueable for data collection) of images, in native image pixels, with
# the analyser that wrote each and why re-processing kept it (NULL: another tool's row).
AUTO_TARGETS_SQL = """
SELECT ss.blSubSampleId, ss.blSampleId, ss.blSampleImageId, p.posX, p.posY, w.score,
       w.analyser, w.keptReason
FROM BLSubSample ss
JOIN Position p ON p.positionId = ss.positionId
LEFT JOIN chimp_ispyb_row w ON w.tableName = 'BLSubSample' AND w.rowId = ss.blSubSampleId
WHERE ss.source = 'auto' AND ss.blSampleImageId IN :imageIds
ORDER BY ss.blSampleImageId, ss.blSubSampleId
"""

# Per sample, the 'dispensing' position with the highest id: the one SynchWeb shows and the
# dispenser uses. It is the worker's while it is the row the worker wrote, unmoved; staff's
# when staff added it or edited the worker's row in place.
DISPENSE_SQL = """
SELECT bp.blSampleId, bp.blSamplePositionId, bp.posX, bp.posY,
       CASE WHEN w.rowId IS NOT NULL AND w.posX = bp.posX AND w.posY = bp.posY
            THEN 'worker' ELSE 'staff' END AS dispenseBy,
       w.blSampleImageId AS writtenFor
FROM BLSamplePosition bp
JOIN BLSample s ON s.blSampleId = bp.blSampleId
LEFT JOIN chimp_ispyb_row w
       ON w.tableName = 'BLSamplePosition' AND w.rowId = bp.blSamplePositionId
WHERE s.containerId = :containerId AND bp.positionType = 'dispensing'
  AND bp.blSamplePositionId = (SELECT MAX(newest.blSamplePositionId) FROM BLSamplePosition newest
                               WHERE newest.blSampleId = bp.blSampleId
                                 AND newest.positionType = 'dispensing')
"""

DETECTIONS_SQL = """
SELECT blSampleImageId, detectionIndex, label, score, boxX0, boxY0, boxX1, boxY1, maskArea,
       centroidX, centroidY, blSubSampleId
FROM chimp_detection
WHERE blSampleImageId IN :imageIds
ORDER BY blSampleImageId, detectionIndex
"""

MODELS_SQL = """
SELECT si.containerInspectionId, m.role, m.modelName, m.sha256, COUNT(*) AS images
FROM chimp_image_model m
JOIN BLSampleImage si ON si.blSampleImageId = m.blSampleImageId
JOIN ContainerInspection ci ON ci.containerInspectionId = si.containerInspectionId
WHERE ci.containerId = :containerId
GROUP BY si.containerInspectionId, m.role, m.modelName, m.sha256
ORDER BY si.containerInspectionId, m.role
"""

# Preference when one image carries scores under several schemas (e.g. re-scored by CHiMP
# after the baseline): the schema the worker's current result names, then CHIMP, then any.
_SCHEMA_PREFERENCE = ("CHIMP",)
_IN_CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit


@dataclass(frozen=True)
class Plate:
    """A Container as the staff commands need it: ids, visit and geometry."""

    containerId: int
    barcode: str | None
    container_type: str | None
    layout: PlateLayout
    sessionId: int | None = None
    visit: str | None = None


@dataclass(frozen=True)
class InspectionSummary:
    """One ContainerInspection of a plate and how far the worker got with it."""

    containerInspectionId: int
    state: str | None
    completed: dt.datetime | None
    imaged: dt.datetime | None
    inspection_type: str | None
    images: int
    done: int
    failed: int
    processing: str  # done | in progress | pending | not imaged
    models: tuple[str, ...] = ()  # "role name sha256[:12]" of the results

    @property
    def pending(self) -> int:
        return self.images - self.done - self.failed


@dataclass(frozen=True)
class TargetRow:
    """One auto BLSubSample: a crystal target ready to be queued for data collection."""

    blSubSampleId: int
    blSampleId: int
    blSampleImageId: int
    x: float
    y: float
    score: float | None
    analyser: str | None = None  # None: not written by the worker (another tool, or by hand)
    kept: str | None = None  # why re-processing kept it, e.g. "queued by staff"


@dataclass(frozen=True)
class DispenseRow:
    """The sample's dispense point as SynchWeb shows it, and whose it is."""

    blSamplePositionId: int
    x: float
    y: float
    by: str  # "worker" or "staff"
    blSampleImageId: int | None  # the image whose result the worker wrote it for


@dataclass(frozen=True)
class DetectionRow:
    blSampleImageId: int
    detectionIndex: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    maskArea: int
    centroid: tuple[int, int] | None
    blSubSampleId: int | None


@dataclass(frozen=True)
class DropResult:
    """One drop (BLSample) with the result of one of its images, as staff see it."""

    blSampleId: int
    location: int | None
    well: str | None
    drop: int | None
    sampleName: str | None
    containerInspectionId: int | None
    blSampleImageId: int | None
    imageFullPath: str | None
    state: str  # done | failed | pending | no image
    failureReason: str | None
    analyser: str | None
    schemaName: str | None
    probabilities: Mapping[str, float]
    targets: tuple[TargetRow, ...]
    dispenseStatus: str | None  # the worker's finding for this image
    dispenseX: float | None  # the sample's dispense point (SynchWeb's)
    dispenseY: float | None
    imageWidth: int | None
    imageHeight: int | None
    micronsPerPixel: tuple[float | None, float | None] = (None, None)
    detections: tuple[DetectionRow, ...] = field(default=())
    dispense: DispenseRow | None = None

    @property
    def dispenseBy(self) -> str | None:
        """'worker' or 'staff': whose dispense point SynchWeb shows for this drop."""
        return self.dispense.by if self.dispense else None

    @property
    def keptTargets(self) -> tuple[TargetRow, ...]:
        return tuple(target for target in self.targets if target.kept)

    @property
    def topClass(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=lambda name: self.probabilities[name])

    @property
    def pCrystal(self) -> float | None:
        return self.probabilities.get("crystal")


# --- plate and inspections -------------------------------------------------------------------


def _visit(row: RowMapping) -> str | None:
    if not row["proposalCode"] or not row["proposalNumber"]:
        return None
    number = row["visit_number"]
    suffix = f"-{number}" if number is not None else ""
    return f"{row['proposalCode']}{row['proposalNumber']}{suffix}"


def _plate_from_row(row: RowMapping) -> Plate:
    layout = PlateLayout.from_container_type(
        capacity=row["capacity"],
        well_per_row=row["wellPerRow"],
        drop_per_well_x=row["dropPerWellX"],
        drop_per_well_y=row["dropPerWellY"],
        well_drop=row["wellDrop"],
    )
    return Plate(
        containerId=int(row["containerId"]),
        barcode=row["barcode"],
        container_type=row["typeName"] or row["containerType"],
        layout=layout,
        sessionId=row["sessionId"],
        visit=_visit(row),
    )


def _one_plate(session: Session, where: str, **params: Any) -> Plate | None:
    rows = session.execute(text(PLATE_SQL + where), params).mappings().all()
    return _plate_from_row(rows[0]) if rows else None


def find_plate(
    session_factory: sessionmaker[Session],
    *,
    barcode: str | None = None,
    inspection_id: int | None = None,
) -> Plate:
    """The plate with this barcode, or the plate an inspection belongs to.

    Raises ``NotFoundError`` naming what was asked for when it does not exist.
    """
    if (barcode is None) == (inspection_id is None):
        raise ValueError("find_plate: give exactly one of barcode or inspection_id")
    with translate_db_errors(), session_factory() as session:
        if barcode is not None:
            plate = _one_plate(session, "WHERE c.barcode = :barcode", barcode=barcode)
            if plate is None:
                raise NotFoundError(f"no plate (Container) with barcode {barcode!r}")
            return plate
        plate = _one_plate(
            session,
            "WHERE c.containerId = (SELECT containerId FROM ContainerInspection "
            "WHERE containerInspectionId = :inspectionId)",
            inspectionId=inspection_id,
        )
        if plate is None:
            raise NotFoundError(f"no ContainerInspection {inspection_id}")
        return plate


def _processing_label(row: RowMapping) -> str:
    if row["processing"] == "done":
        return "done"
    if row["state"] != "Completed":
        return "not imaged"
    if (row["done"] or 0) + (row["failed"] or 0) > 0:
        return "in progress"
    return "pending"


def plate_inspections(
    session_factory: sessionmaker[Session], plate: Plate
) -> list[InspectionSummary]:
    """Every inspection of a plate, oldest first, with image counts by processing state."""
    with translate_db_errors(), session_factory() as session:
        rows = (
            session.execute(text(INSPECTIONS_SQL), {"containerId": plate.containerId})
            .mappings()
            .all()
        )
        model_rows = (
            session.execute(text(MODELS_SQL), {"containerId": plate.containerId}).mappings().all()
        )
    models: dict[int, list[str]] = defaultdict(list)
    for model in model_rows:
        models[int(model["containerInspectionId"])].append(
            f"{model['role']} {model['modelName']} {model['sha256'][:12]}"
        )
    return [
        InspectionSummary(
            containerInspectionId=int(row["containerInspectionId"]),
            state=row["state"],
            completed=as_datetime(row["completedTimeStamp"]),
            imaged=as_datetime(row["blTimeStamp"]),
            inspection_type=row["inspectionType"],
            images=int(row["images"] or 0),
            done=int(row["done"] or 0),
            failed=int(row["failed"] or 0),
            processing=_processing_label(row),
            models=tuple(models.get(int(row["containerInspectionId"]), ())),
        )
        for row in rows
    ]


# --- drops -----------------------------------------------------------------------------------


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield list(ids[start : start + _IN_CHUNK])


def _in_query(
    session: Session, sql: str, name: str, ids: Sequence[int], **params: Any
) -> list[RowMapping]:
    """Run a query with an expanding ``IN :name`` list, in chunks; nothing for no ids."""
    statement = text(sql).bindparams(bindparam(name, expanding=True))
    rows: list[RowMapping] = []
    for chunk in _chunks(sorted(set(ids))):
        rows.extend(session.execute(statement, {name: chunk, **params}).mappings().all())
    return rows


def _drop_rows(session: Session, plate: Plate, inspection_id: int | None) -> list[RowMapping]:
    images = LATEST_IMAGES_SQL if inspection_id is None else INSPECTION_IMAGES_SQL
    sql = DROPS_SQL.format(images=images.strip())
    params = {"containerId": plate.containerId, "containerInspectionId": inspection_id}
    return list(session.execute(text(sql), params).mappings().all())


def _pick_schema(
    scores: Mapping[str, Mapping[str, float]], current: str | None
) -> tuple[str | None, Mapping[str, float]]:
    if not scores:
        return None, {}
    for name in (current, *_SCHEMA_PREFERENCE):
        if name is not None and name in scores:
            return name, scores[name]
    name = sorted(scores)[0]
    return name, scores[name]


def as_datetime(value: Any) -> dt.datetime | None:
    """DATETIME columns from a text() query: MariaDB gives datetimes, SQLite gives strings."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _location(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def drop_results(
    session_factory: sessionmaker[Session],
    plate: Plate,
    inspection_id: int | None = None,
    *,
    with_detections: bool = False,
) -> list[DropResult]:
    """One row per BLSample of the plate, in plate order.

    Without ``inspection_id``: each sample's latest image (SynchWeb's view); with it, that
    inspection's images. Either way the dispense point is the one SynchWeb shows for the
    sample (its highest-id 'dispensing' row), with whose it is.
    """
    with translate_db_errors(), session_factory() as session:
        if inspection_id is not None:
            _require_inspection_of(session, plate, inspection_id)
        drops = _drop_rows(session, plate, inspection_id)
        image_ids = [int(r["blSampleImageId"]) for r in drops if r["blSampleImageId"] is not None]
        scores: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        for row in _in_query(session, PROBABILITIES_SQL, "imageIds", image_ids):
            if row["probability"] is not None:
                scores[int(row["blSampleImageId"])][row["schemaName"]][row["scoreClass"]] = float(
                    row["probability"]
                )
        targets: dict[int, list[TargetRow]] = defaultdict(list)
        for row in _in_query(session, AUTO_TARGETS_SQL, "imageIds", image_ids):
            targets[int(row["blSampleImageId"])].append(
                TargetRow(
                    blSubSampleId=int(row["blSubSampleId"]),
                    blSampleId=int(row["blSampleId"]),
                    blSampleImageId=int(row["blSampleImageId"]),
                    x=float(row["posX"]),
                    y=float(row["posY"]),
                    score=None if row["score"] is None else float(row["score"]),
                    analyser=row["analyser"],
                    kept=row["keptReason"],
                )
            )
        positions = _dispense_positions(session, plate)
        detections: dict[int, list[DetectionRow]] = defaultdict(list)
        if with_detections:
            for row in _in_query(session, DETECTIONS_SQL, "imageIds", image_ids):
                detections[int(row["blSampleImageId"])].append(_detection(row))

    results = []
    for row in drops:
        image_id = None if row["blSampleImageId"] is None else int(row["blSampleImageId"])
        location = _location(row["location"])
        position = None
        if location is not None:
            try:
                position = plate.layout.locate(location)
            except ValueError:
                position = None
        image_scores = {} if image_id is None else scores.get(image_id, {})
        schema, probabilities = _pick_schema(image_scores, row["schemaName"])
        state = "no image" if image_id is None else row["state"] or "pending"
        dispense = positions.get(int(row["blSampleId"]))
        results.append(
            DropResult(
                blSampleId=int(row["blSampleId"]),
                location=location,
                well=position.well if position else None,
                drop=position.drop if position else None,
                sampleName=row["sampleName"],
                containerInspectionId=row["containerInspectionId"],
                blSampleImageId=image_id,
                imageFullPath=row["imageFullPath"],
                state=state,
                failureReason=row["failureReason"],
                analyser=row["analyser"],
                schemaName=schema or row["schemaName"],
                probabilities=dict(probabilities),
                targets=tuple(targets.get(image_id, ())) if image_id is not None else (),
                dispenseStatus=row["dispenseStatus"],
                dispenseX=dispense.x if dispense else None,
                dispenseY=dispense.y if dispense else None,
                imageWidth=row["imageWidth"],
                imageHeight=row["imageHeight"],
                micronsPerPixel=(row["micronsPerPixelX"], row["micronsPerPixelY"]),
                detections=tuple(detections.get(image_id, ())) if image_id is not None else (),
                dispense=dispense,
            )
        )
    return results


def _require_inspection_of(session: Session, plate: Plate, inspection_id: int) -> None:
    owner = session.execute(
        text("SELECT containerId FROM ContainerInspection WHERE containerInspectionId = :id"),
        {"id": inspection_id},
    ).scalar()
    if owner is None:
        raise NotFoundError(f"no ContainerInspection {inspection_id}")
    if int(owner) != plate.containerId:
        raise NotFoundError(
            f"inspection {inspection_id} belongs to container {owner}, not to plate "
            f"{plate.barcode} (container {plate.containerId})"
        )


def _dispense_positions(session: Session, plate: Plate) -> dict[int, DispenseRow]:
    """blSampleId -> the dispense point SynchWeb shows for the sample."""
    rows = session.execute(text(DISPENSE_SQL), {"containerId": plate.containerId}).mappings()
    return {
        int(row["blSampleId"]): DispenseRow(
            blSamplePositionId=int(row["blSamplePositionId"]),
            x=float(row["posX"]),
            y=float(row["posY"]),
            by=row["dispenseBy"],
            blSampleImageId=None if row["writtenFor"] is None else int(row["writtenFor"]),
        )
        for row in rows
        if row["posX"] is not None and row["posY"] is not None
    }


def _detection(row: RowMapping) -> DetectionRow:
    centroid = None
    if row["centroidX"] is not None and row["centroidY"] is not None:
        centroid = (int(row["centroidX"]), int(row["centroidY"]))
    return DetectionRow(
        blSampleImageId=int(row["blSampleImageId"]),
        detectionIndex=int(row["detectionIndex"]),
        label=row["label"],
        score=float(row["score"]),
        box=(float(row["boxX0"]), float(row["boxY0"]), float(row["boxX1"]), float(row["boxY1"])),
        maskArea=int(row["maskArea"]),
        centroid=centroid,
        blSubSampleId=None if row["blSubSampleId"] is None else int(row["blSubSampleId"]),
    )


def crystal_targets(
    session_factory: sessionmaker[Session], plate: Plate, inspection_id: int | None = None
) -> list[tuple[DropResult, TargetRow]]:
    """Every auto crystal target of the plate's latest images (or of one inspection)."""
    return [
        (drop, target)
        for drop in drop_results(session_factory, plate, inspection_id)
        for target in drop.targets
    ]
