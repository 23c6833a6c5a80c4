"""Crystal targets as auto BLSubSamples: replacing the worker's own, keeping what staff use.

Every ``source='auto'`` BLSubSample is queueable in SynchWeb, and staff act on them. When an
image gets a new result (new model files, a replay, a redelivery with another outcome), its
earlier auto sub-samples are sorted into:

- another tool's or another analyser's rows (not in ``chimp_ispyb_row``, or written by another
  analyser): never touched;
- the analyser's own rows that something references (queued, collected, measured... see
  ``references.py``) or that staff moved (Position no longer where the worker put it): kept
  exactly as they are, with the reason recorded in ``chimp_ispyb_row.keptReason``;
- the analyser's own unreferenced, unmoved rows: deleted with their Positions, and a new row
  written per crystal target. A target exactly on a kept row's point reuses that row instead of
  stacking a second point on it.

A delete the database still refuses (a reference this module does not know about, RESTRICT)
keeps that row too, with the database's reason; the rest of the write goes on.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, exc, select
from sqlalchemy.orm import Session

from chimp_worker.analysis import CrystalTarget, ImageAnalysis
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import describe
from chimp_worker.ispyb.references import ReferenceTables, referenced_subsamples
from chimp_worker.ispyb.worker_tables import ChimpIspybRow

SUBSAMPLE_TYPE_POINT = "poi"
SOURCE_AUTO = "auto"
TABLE = "BLSubSample"
MOVED_BY_STAFF = "moved by staff"
KEPT_REASON_MAX = 64


@dataclass(frozen=True)
class TargetsOutcome:
    """Detection index -> blSubSampleId of each target, and the rows kept (id -> reason)."""

    by_detection: Mapping[int, int] = field(default_factory=dict)
    kept: Mapping[int, str] = field(default_factory=dict)
    deleted: tuple[int, ...] = ()


@dataclass(frozen=True)
class _AutoRow:
    blSubSampleId: int
    positionId: int | None
    position2Id: int | None
    posX: float | None
    posY: float | None


def replace_auto_subsamples(
    session: Session,
    image: t.BLSampleImage,
    analysis: ImageAnalysis,
    references: ReferenceTables,
    now: datetime.datetime,
) -> TargetsOutcome:
    """Bring the image's auto sub-samples of ``analysis.analyser`` to ``analysis``'s targets."""
    rows = _auto_rows(session, image.blSampleImageId)
    registry = _registry(session, image.blSampleImageId)
    _forget_vanished(session, registry, {row.blSubSampleId for row in rows})
    ours = [
        row
        for row in rows
        if row.blSubSampleId in registry
        and registry[row.blSubSampleId].analyser == analysis.analyser
    ]
    kept = dict(referenced_subsamples(session, references, [r.blSubSampleId for r in ours]))
    for row in ours:
        entry = registry[row.blSubSampleId]
        if row.blSubSampleId not in kept and (row.posX, row.posY) != (entry.posX, entry.posY):
            kept[row.blSubSampleId] = MOVED_BY_STAFF
    doomed = [row for row in ours if row.blSubSampleId not in kept]
    kept.update(_delete(session, doomed))
    deleted = tuple(row.blSubSampleId for row in doomed if row.blSubSampleId not in kept)
    for subsample_id in deleted:
        session.delete(registry.pop(subsample_id))
    for subsample_id, reason in kept.items():
        entry = registry[subsample_id]
        if entry.keptReason != reason:
            entry.keptReason = reason[:KEPT_REASON_MAX]
            entry.keptAt = now
    reusable = {
        (entry.posX, entry.posY): subsample_id
        for subsample_id, entry in registry.items()
        if subsample_id in kept and kept[subsample_id] != MOVED_BY_STAFF
    }
    by_detection: dict[int, int] = {}
    for target in analysis.crystal_targets:
        point = (float(target.x), float(target.y))
        if point in reusable:
            by_detection[target.detection_index] = reusable[point]
            continue
        by_detection[target.detection_index] = _insert(session, image, analysis, target, now)
    return TargetsOutcome(by_detection, kept, deleted)


def _auto_rows(session: Session, image_id: int) -> list[_AutoRow]:
    return [
        _AutoRow(*row)
        for row in session.execute(
            select(
                t.BLSubSample.blSubSampleId,
                t.BLSubSample.positionId,
                t.BLSubSample.position2Id,
                t.Position.posX,
                t.Position.posY,
            )
            .outerjoin(t.Position, t.Position.positionId == t.BLSubSample.positionId)
            .where(t.BLSubSample.blSampleImageId == image_id)
            .where(t.BLSubSample.source == SOURCE_AUTO)
            .order_by(t.BLSubSample.blSubSampleId)
        )
    ]


def _registry(session: Session, image_id: int) -> dict[int, ChimpIspybRow]:
    return {
        entry.rowId: entry
        for entry in session.scalars(
            select(ChimpIspybRow).where(
                ChimpIspybRow.tableName == TABLE, ChimpIspybRow.blSampleImageId == image_id
            )
        )
    }


def _forget_vanished(
    session: Session, registry: dict[int, ChimpIspybRow], existing: set[int]
) -> None:
    """Registry entries of sub-samples someone else deleted (staff, a clean-up) go too."""
    for subsample_id in [i for i in registry if i not in existing]:
        session.delete(registry.pop(subsample_id))


def _delete(session: Session, rows: Sequence[_AutoRow]) -> dict[int, str]:
    """Delete sub-samples and their orphaned Positions; returns those the database refused."""
    if not rows:
        return {}
    ids = [row.blSubSampleId for row in rows]
    refused: dict[int, str] = {}
    try:
        with session.begin_nested():
            session.execute(delete(t.BLSubSample).where(t.BLSubSample.blSubSampleId.in_(ids)))
    except exc.IntegrityError:  # something we do not know about refers to one of them
        for subsample_id in ids:
            try:
                with session.begin_nested():
                    session.execute(
                        delete(t.BLSubSample).where(t.BLSubSample.blSubSampleId == subsample_id)
                    )
            except exc.IntegrityError as error:
                refused[subsample_id] = f"referenced: {describe(error)}"
    gone = [row for row in rows if row.blSubSampleId not in refused]
    positions = {pid for row in gone for pid in (row.positionId, row.position2Id) if pid}
    if positions:
        still_used = set(
            session.scalars(
                select(t.BLSubSample.positionId).where(t.BLSubSample.positionId.in_(positions))
            )
        ) | set(
            session.scalars(
                select(t.BLSubSample.position2Id).where(t.BLSubSample.position2Id.in_(positions))
            )
        )
        orphans = positions - still_used
        if orphans:
            session.execute(delete(t.Position).where(t.Position.positionId.in_(orphans)))
    return refused


def _insert(
    session: Session,
    image: t.BLSampleImage,
    analysis: ImageAnalysis,
    target: CrystalTarget,
    now: datetime.datetime,
) -> int:
    x, y, score = float(target.x), float(target.y), float(target.score)
    # ISPyB's own time stamps are the server's local time; the worker's tables keep UTC.
    position = t.Position(posX=x, posY=y, recordTimeStamp=datetime.datetime.now())
    session.add(position)
    session.flush()
    subsample = t.BLSubSample(
        blSampleId=image.blSampleId,
        blSampleImageId=image.blSampleImageId,
        positionId=position.positionId,
        source=SOURCE_AUTO,
        type=SUBSAMPLE_TYPE_POINT,
        comments=f"{analysis.analyser} crystal p={score:.2f}",
    )
    session.add(subsample)
    session.flush()
    session.add(
        ChimpIspybRow(
            tableName=TABLE,
            rowId=subsample.blSubSampleId,
            blSampleId=image.blSampleId,
            blSampleImageId=image.blSampleImageId,
            analyser=analysis.analyser,
            posX=x,
            posY=y,
            score=score,
            createdAt=now,
        )
    )
    return subsample.blSubSampleId
