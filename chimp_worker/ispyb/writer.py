"""Writes one image's analysis into ISPyB and the worker's tables, in one short transaction.

Idempotent by construction, because RabbitMQ delivers at least once:

- the result's digest (everything but timings) is stored; the same result again is a no-op,
  so a redelivered message leaves every row -- ids and timestamps included -- as it was;
- a different result replaces the image's ``source='auto'`` BLSubSample rows and their
  Position rows (ISPyB has no natural key there and the facility's procedure only inserts),
  never a manual one, and never leaves an orphan Position;
- probabilities are upserted per (image, class) under the analyser's own auto-score schema,
  mapped by *name* through ``ISPYB_SCORE_CLASS``, never by position;
- the 'dispensing' BLSamplePosition this worker wrote for the image is replaced, not added to.

The BLSampleImage row is locked (``SELECT ... FOR UPDATE``) for the few milliseconds of the
write, so two workers racing on the same image serialise instead of interleaving.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import ISPYB_SCORE_CLASS, DispenseStatus, ImageAnalysis
from chimp_worker.errors import AnalysisError, MissingScoreClassError, UnknownImageError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import transaction
from chimp_worker.ispyb.worker_tables import ChimpDetection, ChimpImageModel, ChimpImageResult

FAILURE_REASON_MAX = 64
FAILURE_DETAIL_MAX = 4000
SUBSAMPLE_TYPE_POINT = "poi"
SOURCE_AUTO = "auto"
POSITION_TYPE_DISPENSING = "dispensing"


@dataclass(frozen=True)
class WriteOutcome:
    """What a write did: ``changed`` is False when an identical result was already stored."""

    blSampleImageId: int
    changed: bool
    blSubSampleIds: tuple[int, ...] = ()
    blSamplePositionId: int | None = None


def utcnow() -> datetime.datetime:
    """Naive UTC, the convention of the worker's own timestamp columns."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def result_digest(analysis: ImageAnalysis) -> str:
    """sha256 of everything that lands in the database except timings (which vary per run)."""
    dispense = analysis.dispense
    canonical: dict[str, Any] = {
        "analyser": analysis.analyser,
        "schema": analysis.schema_name,
        "models": sorted((m.role, m.name, m.sha256) for m in analysis.models),
        "size": [analysis.width, analysis.height],
        "target_rule": analysis.target_rule,
        "probabilities": sorted(
            (name, float(p)) for name, p in (analysis.probabilities or {}).items()
        ),
        "detections": [
            [d.label, float(d.score), [float(v) for v in d.box], int(d.mask_area), d.centroid]
            for d in analysis.detections
        ],
        "targets": [
            [c.x, c.y, float(c.score), c.detection_index] for c in analysis.crystal_targets
        ],
        "dispense": None
        if dispense is None
        else [
            str(dispense.status),
            dispense.x,
            dispense.y,
            dispense.clearance_px,
            dispense.drops_seen,
        ],
    }
    text = json.dumps(canonical, sort_keys=True, default=_json_number)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_number(value: Any) -> Any:
    """numpy scalars (from the models) serialise as plain numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not serialisable: {type(value).__name__}")


def write_image_result(
    session_factory: sessionmaker[Session],
    blsample_image_id: int,
    analysis: ImageAnalysis,
    *,
    queueable_targets: bool = True,
) -> WriteOutcome:
    """Write ``analysis`` for one BLSampleImage; an identical result already stored is a no-op.

    With ``queueable_targets`` False, crystal targets and the dispense point are kept only in
    the worker's own tables: every auto BLSubSample is queueable for data collection, so an
    untrusted analyser (the weight-free baseline) must not create them.
    """
    digest = result_digest(analysis)
    # ISPyB's queueable rows come from this view of the result; the worker rows keep it all.
    queued = analysis if queueable_targets else replace(analysis, crystal_targets=(), dispense=None)
    if not queueable_targets:
        digest = hashlib.sha256(f"{digest}|targets-not-queued".encode()).hexdigest()
    with transaction(session_factory) as session:
        image = _lock_image(session, blsample_image_id)
        record = session.get(ChimpImageResult, blsample_image_id)
        if record is not None and record.state == "done" and record.resultDigest == digest:
            return WriteOutcome(blsample_image_id, changed=False)
        _write_probabilities(session, blsample_image_id, analysis)
        subsample_ids = _replace_auto_subsamples(session, image, queued)
        position_id = _replace_dispense_position(session, image, record, queued)
        _replace_worker_rows(session, image, record, analysis, digest, subsample_ids, position_id)
        return WriteOutcome(
            blsample_image_id,
            changed=True,
            blSubSampleIds=tuple(subsample_ids.values()),
            blSamplePositionId=position_id,
        )


def record_image_failure(
    session_factory: sessionmaker[Session],
    blsample_image_id: int,
    reason: str,
    detail: str,
    analyser: str,
) -> bool:
    """Mark an image failed with its reason; returns False when that exact failure was recorded.

    ISPyB rows from an earlier successful result are kept: a failed re-fetch must not erase
    what staff may already be using. The digest is cleared so the next success rewrites.
    """
    reason = reason[:FAILURE_REASON_MAX]
    detail = detail[:FAILURE_DETAIL_MAX]
    with transaction(session_factory) as session:
        image = _lock_image(session, blsample_image_id)
        record = session.get(ChimpImageResult, blsample_image_id)
        if record is None:
            record = _new_record(image)
            session.add(record)
        elif (record.state, record.failureReason, record.failureDetail, record.analyser) == (
            "failed",
            reason,
            detail,
            analyser,
        ):
            return False
        record.state = "failed"
        record.failureReason = reason
        record.failureDetail = detail
        record.analyser = analyser
        record.resultDigest = None
        record.attempts = (record.attempts or 0) + 1
        record.updatedAt = utcnow()
        return True


def _lock_image(session: Session, blsample_image_id: int) -> t.BLSampleImage:
    image = session.scalars(
        select(t.BLSampleImage)
        .where(t.BLSampleImage.blSampleImageId == blsample_image_id)
        .with_for_update()
    ).one_or_none()
    if image is None:
        raise UnknownImageError(f"BLSampleImage {blsample_image_id} does not exist")
    return image


def _new_record(image: t.BLSampleImage) -> ChimpImageResult:
    now = utcnow()
    return ChimpImageResult(
        blSampleImageId=image.blSampleImageId,
        containerInspectionId=image.containerInspectionId,
        state="pending",
        attempts=0,
        createdAt=now,
        updatedAt=now,
    )


def score_class_ids(session: Session, schema_name: str) -> dict[str, int]:
    """ISPyB score-class name -> class id, for one auto-score schema."""
    rows = session.execute(
        select(
            t.BLSampleImageAutoScoreClass.scoreClass,
            t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId,
        )
        .join(
            t.BLSampleImageAutoScoreSchema,
            t.BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId
            == t.BLSampleImageAutoScoreClass.blSampleImageAutoScoreSchemaId,
        )
        .where(t.BLSampleImageAutoScoreSchema.schemaName == schema_name)
    ).all()
    return {name: class_id for name, class_id in rows}


def ispyb_probabilities(
    probabilities: Mapping[str, float], class_ids: Mapping[str, int], schema_name: str
) -> dict[int, float]:
    """Canonical class name -> probability, re-keyed by ISPyB class id (by name, never order)."""
    by_class: dict[int, float] = {}
    for name, probability in probabilities.items():
        ispyb_name = ISPYB_SCORE_CLASS.get(name)
        if ispyb_name is None:
            raise AnalysisError(
                f"class {name!r} has no ISPyB score class; expected one of "
                f"{', '.join(sorted(ISPYB_SCORE_CLASS))}"
            )
        class_id = class_ids.get(ispyb_name)
        if class_id is None:
            raise MissingScoreClassError(
                f"BLSampleImageAutoScoreClass {ispyb_name!r} of schema {schema_name!r} is not "
                "in the database; run 'chimp-worker db upgrade' on a development database or "
                "ask the ISPyB administrators to add it"
            )
        by_class[class_id] = float(probability)
    return by_class


def _write_probabilities(session: Session, image_id: int, analysis: ImageAnalysis) -> None:
    class_ids = score_class_ids(session, analysis.schema_name)
    wanted = (
        ispyb_probabilities(analysis.probabilities, class_ids, analysis.schema_name)
        if analysis.probabilities
        else {}
    )
    if not class_ids:
        return
    existing = {
        row.blSampleImageAutoScoreClassId: row
        for row in session.scalars(
            select(t.BLSampleImageHasAutoScoreClass).where(
                t.BLSampleImageHasAutoScoreClass.blSampleImageId == image_id,
                t.BLSampleImageHasAutoScoreClass.blSampleImageAutoScoreClassId.in_(
                    class_ids.values()
                ),
            )
        )
    }
    for class_id, probability in wanted.items():
        row = existing.pop(class_id, None)
        if row is None:
            session.add(
                t.BLSampleImageHasAutoScoreClass(
                    blSampleImageId=image_id,
                    blSampleImageAutoScoreClassId=class_id,
                    probability=probability,
                )
            )
        elif row.probability != probability:
            row.probability = probability
    for stale in existing.values():
        session.delete(stale)


def _replace_auto_subsamples(
    session: Session, image: t.BLSampleImage, analysis: ImageAnalysis
) -> dict[int, int]:
    """Delete the image's auto sub-samples and their positions; one new per crystal target.

    Returns detection index -> new blSubSampleId.
    """
    old = session.execute(
        select(t.BLSubSample.blSubSampleId, t.BLSubSample.positionId, t.BLSubSample.position2Id)
        .where(t.BLSubSample.blSampleImageId == image.blSampleImageId)
        .where(t.BLSubSample.source == SOURCE_AUTO)
    ).all()
    if old:
        session.execute(
            delete(t.BLSubSample).where(t.BLSubSample.blSubSampleId.in_([r[0] for r in old]))
        )
        position_ids = {pid for row in old for pid in row[1:] if pid is not None}
        still_used = set(
            session.scalars(
                select(t.BLSubSample.positionId).where(t.BLSubSample.positionId.in_(position_ids))
            )
        ) | set(
            session.scalars(
                select(t.BLSubSample.position2Id).where(t.BLSubSample.position2Id.in_(position_ids))
            )
        )
        orphans = position_ids - still_used
        if orphans:
            session.execute(delete(t.Position).where(t.Position.positionId.in_(orphans)))
    now = datetime.datetime.now()
    created: dict[int, int] = {}
    for target in analysis.crystal_targets:
        position = t.Position(posX=float(target.x), posY=float(target.y), recordTimeStamp=now)
        session.add(position)
        session.flush()
        subsample = t.BLSubSample(
            blSampleId=image.blSampleId,
            blSampleImageId=image.blSampleImageId,
            positionId=position.positionId,
            source=SOURCE_AUTO,
            type=SUBSAMPLE_TYPE_POINT,
            comments=f"{analysis.analyser} crystal p={float(target.score):.2f}",
        )
        session.add(subsample)
        session.flush()
        created[target.detection_index] = subsample.blSubSampleId
    return created


def _replace_dispense_position(
    session: Session,
    image: t.BLSampleImage,
    record: ChimpImageResult | None,
    analysis: ImageAnalysis,
) -> int | None:
    """Replace the dispensing BLSamplePosition this worker wrote for the image, if any.

    Stamped with the image's own time, so "latest row per sample" stays the latest
    *inspection* even when an older inspection is replayed later.
    """
    if record is not None and record.blSamplePositionId is not None:
        session.execute(
            delete(t.BLSamplePosition).where(
                t.BLSamplePosition.blSamplePositionId == record.blSamplePositionId
            )
        )
    dispense = analysis.dispense
    if dispense is None or dispense.status != DispenseStatus.OK or dispense.x is None:
        return None
    position = t.BLSamplePosition(
        blSampleId=image.blSampleId,
        posX=float(dispense.x),
        posY=float(dispense.y) if dispense.y is not None else None,
        positionType=POSITION_TYPE_DISPENSING,
        recordTimeStamp=image.blTimeStamp or datetime.datetime.now(),
    )
    session.add(position)
    session.flush()
    return position.blSamplePositionId


def _replace_worker_rows(
    session: Session,
    image: t.BLSampleImage,
    record: ChimpImageResult | None,
    analysis: ImageAnalysis,
    digest: str,
    subsample_ids: Mapping[int, int],
    position_id: int | None,
) -> None:
    image_id = image.blSampleImageId
    session.execute(delete(ChimpDetection).where(ChimpDetection.blSampleImageId == image_id))
    session.execute(delete(ChimpImageModel).where(ChimpImageModel.blSampleImageId == image_id))
    for index, detection in enumerate(analysis.detections):
        x0, y0, x1, y1 = (float(v) for v in detection.box)
        centroid = detection.centroid
        session.add(
            ChimpDetection(
                blSampleImageId=image_id,
                detectionIndex=index,
                label=detection.label,
                score=float(detection.score),
                boxX0=x0,
                boxY0=y0,
                boxX1=x1,
                boxY1=y1,
                maskArea=int(detection.mask_area),
                centroidX=None if centroid is None else int(centroid[0]),
                centroidY=None if centroid is None else int(centroid[1]),
                blSubSampleId=subsample_ids.get(index),
            )
        )
    for model in analysis.models:
        session.add(
            ChimpImageModel(
                blSampleImageId=image_id, role=model.role, modelName=model.name, sha256=model.sha256
            )
        )
    if record is None:
        record = _new_record(image)
        session.add(record)
    top = analysis.top_class
    dispense = analysis.dispense
    timings = {name: round(float(ms), 3) for name, ms in analysis.timings_ms.items()}
    record.containerInspectionId = image.containerInspectionId
    record.state = "done"
    record.analyser = analysis.analyser
    record.schemaName = analysis.schema_name
    record.topClass = top
    record.topProbability = (
        float(analysis.probabilities[top]) if top and analysis.probabilities else None
    )
    record.crystalCount = len(analysis.crystal_targets)
    record.dropCount = sum(1 for d in analysis.detections if d.label == "drop")
    record.dispenseStatus = None if dispense is None else str(dispense.status)
    record.dispenseX = None if dispense is None else dispense.x
    record.dispenseY = None if dispense is None else dispense.y
    record.dispenseClearancePx = (
        None if dispense is None or dispense.clearance_px is None else float(dispense.clearance_px)
    )
    record.dropsSeen = None if dispense is None else dispense.drops_seen
    record.blSamplePositionId = position_id
    record.imageWidth = analysis.width
    record.imageHeight = analysis.height
    record.timingsJson = json.dumps(timings, sort_keys=True)
    record.totalMs = round(sum(timings.values()), 3) if timings else None
    record.resultDigest = digest
    record.targetRule = analysis.target_rule
    record.failureReason = None
    record.failureDetail = None
    record.attempts = (record.attempts or 0) + 1
    record.updatedAt = utcnow()
