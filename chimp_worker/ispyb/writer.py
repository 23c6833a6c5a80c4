"""Writes one image's analysis into ISPyB and the worker's tables, in one short transaction.

Idempotent by construction, because RabbitMQ delivers at least once: the result's digest
(everything but timings) is stored, and the same result again is a no-op, so a redelivered
message leaves every row -- ids and timestamps included -- as it was.

A different result (new model files, a replay) never destroys staff work, on the rules of a
facility's ISPyB (see ``targets.py`` and ``dispense.py``):

- probabilities are upserted per (image, class) under the analyser's own auto-score schema,
  mapped by *name* through ``ISPYB_SCORE_CLASS``, never by position; a schema that is missing
  or disabled is never written;
- only the analyser's own unreferenced, unmoved auto BLSubSamples are replaced; queued,
  collected or moved ones, manual ones and other analysers' ones stay exactly as they are;
- the sample's dispense point is set from its latest image only, and never deletes,
  overrides or shadows a row staff added or edited;
- every ISPyB row the worker inserts is recorded in ``chimp_ispyb_row`` (what it wrote, which
  analyser, and why a later result kept it).

A write the database refuses (a foreign key, a constraint) raises ``DatabaseRefusedError``:
permanent, with a specific reason, so the image fails and the rest of the plate goes on.

All BLSampleImage rows of the image's sample are locked (``SELECT ... FOR UPDATE``, in id
order) for the few milliseconds of the write, so two workers racing on one image, or on two
inspections of one drop, serialise instead of interleaving.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import ISPYB_SCORE_CLASS, ImageAnalysis
from chimp_worker.errors import (
    AnalysisError,
    DatabaseRefusedError,
    MissingScoreClassError,
    UnknownImageError,
)
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import transaction, translate_refusals
from chimp_worker.ispyb.dispense import POSITION_TYPE_DISPENSING, place_dispense_point
from chimp_worker.ispyb.references import ReferenceTables, reference_tables
from chimp_worker.ispyb.targets import SOURCE_AUTO, SUBSAMPLE_TYPE_POINT, replace_auto_subsamples
from chimp_worker.ispyb.worker_tables import ChimpDetection, ChimpImageModel, ChimpImageResult

FAILURE_REASON_MAX = 64
FAILURE_DETAIL_MAX = 4000
__all__ = [
    "POSITION_TYPE_DISPENSING",
    "SOURCE_AUTO",
    "SUBSAMPLE_TYPE_POINT",
    "WriteOutcome",
    "record_image_failure",
    "write_image_result",
]


@dataclass(frozen=True)
class WriteOutcome:
    """What a write did: ``changed`` is False when an identical result was already stored."""

    blSampleImageId: int
    changed: bool
    blSubSampleIds: tuple[int, ...] = ()
    blSamplePositionId: int | None = None
    kept: Mapping[int, str] = field(default_factory=dict)  # blSubSampleId -> why it was kept
    dispense_held_by: str | None = None  # "staff" / "a newer image": point not written


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

    Raises ``DatabaseRefusedError`` when the database refuses the write for good.
    """
    digest = result_digest(analysis)
    # ISPyB's queueable rows come from this view of the result; the worker rows keep it all.
    queued = analysis if queueable_targets else replace(analysis, crystal_targets=(), dispense=None)
    if not queueable_targets:
        digest = hashlib.sha256(f"{digest}|targets-not-queued".encode()).hexdigest()
    references = reference_tables(_engine_of(session_factory))
    try:
        with translate_refusals():
            return _write(session_factory, blsample_image_id, analysis, queued, digest, references)
    except DatabaseRefusedError as error:
        if error.reason != "db_refused_duplicate":
            raise
    # A duplicate key is most likely a racing insert of the same row (a pending mark): the
    # second attempt sees it committed. Refused again, it is for good.
    with translate_refusals():
        return _write(session_factory, blsample_image_id, analysis, queued, digest, references)


def _engine_of(session_factory: sessionmaker[Session]) -> Engine:
    with session_factory() as session:
        bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _write(
    session_factory: sessionmaker[Session],
    blsample_image_id: int,
    analysis: ImageAnalysis,
    queued: ImageAnalysis,
    digest: str,
    references: ReferenceTables,
) -> WriteOutcome:
    with transaction(session_factory) as session:
        image, latest_image_id = _lock_sample_images(session, blsample_image_id)
        record = session.get(ChimpImageResult, blsample_image_id)
        if record is not None and record.state == "done" and record.resultDigest == digest:
            return WriteOutcome(blsample_image_id, changed=False)
        now = utcnow()
        _write_probabilities(session, blsample_image_id, analysis)
        targets = replace_auto_subsamples(session, image, queued, references, now)
        dispense = place_dispense_point(session, image, latest_image_id, queued, now)
        _replace_worker_rows(
            session,
            image,
            record,
            analysis,
            digest,
            targets.by_detection,
            dispense.blSamplePositionId,
        )
        return WriteOutcome(
            blsample_image_id,
            changed=True,
            blSubSampleIds=tuple(targets.by_detection.values()),
            blSamplePositionId=dispense.blSamplePositionId,
            kept=dict(targets.kept),
            dispense_held_by=dispense.held_by,
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


def _lock_sample_images(session: Session, blsample_image_id: int) -> tuple[t.BLSampleImage, int]:
    """Lock every image of the image's sample (id order); returns it and the latest image id."""
    sample_id = session.scalar(
        select(t.BLSampleImage.blSampleId).where(
            t.BLSampleImage.blSampleImageId == blsample_image_id
        )
    )
    if sample_id is None:
        raise UnknownImageError(f"BLSampleImage {blsample_image_id} does not exist")
    images = session.scalars(
        select(t.BLSampleImage)
        .where(t.BLSampleImage.blSampleId == sample_id)
        .order_by(t.BLSampleImage.blSampleImageId)
        .with_for_update()
    ).all()
    for image in images:
        if image.blSampleImageId == blsample_image_id:
            return image, images[-1].blSampleImageId
    raise UnknownImageError(f"BLSampleImage {blsample_image_id} does not exist")


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
                "in the database; run 'chimp-worker db score-schema' for the statements to hand "
                "to the ISPyB administrators (it applies them on a development database)"
            )
        by_class[class_id] = float(probability)
    return by_class


def _require_enabled(session: Session, schema_name: str) -> None:
    """A schema the ISPyB administrators disabled (enabled = 0) is never written."""
    disabled = session.scalar(
        select(t.BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId).where(
            t.BLSampleImageAutoScoreSchema.schemaName == schema_name,
            t.BLSampleImageAutoScoreSchema.enabled == 0,
        )
    )
    if disabled is not None:
        raise MissingScoreClassError(
            f"BLSampleImageAutoScoreSchema {schema_name!r} (id {disabled}) is disabled "
            "(enabled = 0); it is never written: ask the ISPyB administrators to enable it "
            "(chimp-worker db score-schema prints the statement)",
            reason="score_schema_disabled",
        )


def _write_probabilities(session: Session, image_id: int, analysis: ImageAnalysis) -> None:
    _require_enabled(session, analysis.schema_name)
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
                modelRole=detection.model_role,
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
