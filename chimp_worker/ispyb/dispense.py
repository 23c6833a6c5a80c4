"""The dispense point as SynchWeb shows it: one per sample, never above or instead of staff's.

SynchWeb shows (and the dispenser uses) the sample's 'dispensing' BLSamplePosition with the
highest id, and staff move it by UPDATEing that row in place or add a newer one. So:

- only the result of the sample's latest image sets the sample's point: an older inspection
  replayed later must not put its point on top (its point stays in ``chimp_image_result``);
- a row is staff's when the worker did not write it (not in ``chimp_ispyb_row``) or when its
  coordinates are no longer those the worker wrote (edited in place). When the sample's top row
  is staff's, the worker writes nothing and deletes nothing;
- otherwise the worker's own rows of the sample from the same analyser are replaced by the new
  point (none when the latest image has no safe point); an unchanged point keeps its row and
  id; another analyser's rows and staff rows lower down are never deleted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from chimp_worker.analysis import DispenseStatus, ImageAnalysis
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpIspybRow

POSITION_TYPE_DISPENSING = "dispensing"
TABLE = "BLSamplePosition"
EDITED_BY_STAFF = "edited by staff"


@dataclass(frozen=True)
class DispenseOutcome:
    """The row showing this image's point (None: not shown), and why nothing was written."""

    blSamplePositionId: int | None
    held_by: str | None = None  # "staff" or "a newer image" when the point was not written


@dataclass(frozen=True)
class _Row:
    blSamplePositionId: int
    posX: float | None
    posY: float | None


def place_dispense_point(
    session: Session,
    image: t.BLSampleImage,
    latest_image_id: int,
    analysis: ImageAnalysis,
    now: datetime.datetime,
) -> DispenseOutcome:
    """Write the sample's dispense point from ``analysis`` if the rules above allow it."""
    if image.blSampleImageId != latest_image_id:
        return DispenseOutcome(None, held_by="a newer image")
    rows = [
        _Row(*row)
        for row in session.execute(
            select(
                t.BLSamplePosition.blSamplePositionId,
                t.BLSamplePosition.posX,
                t.BLSamplePosition.posY,
            )
            .where(t.BLSamplePosition.blSampleId == image.blSampleId)
            .where(t.BLSamplePosition.positionType == POSITION_TYPE_DISPENSING)
            .order_by(t.BLSamplePosition.blSamplePositionId)
        )
    ]
    registry = _registry(session, image.blSampleId, {row.blSamplePositionId for row in rows})

    def is_staff(row: _Row) -> bool:
        entry = registry.get(row.blSamplePositionId)
        return entry is None or (row.posX, row.posY) != (entry.posX, entry.posY)

    for row in rows:  # the worker's rows that staff edited: say so, keep them
        entry = registry.get(row.blSamplePositionId)
        if entry is not None and is_staff(row) and entry.keptReason != EDITED_BY_STAFF:
            entry.keptReason, entry.keptAt = EDITED_BY_STAFF, now
    if rows and is_staff(rows[-1]):
        return DispenseOutcome(None, held_by="staff")

    dispense = analysis.dispense
    point = None
    if dispense is not None and dispense.status == DispenseStatus.OK and dispense.x is not None:
        point = (float(dispense.x), float(dispense.y) if dispense.y is not None else None)
    ours = [
        row
        for row in rows
        if not is_staff(row) and registry[row.blSamplePositionId].analyser == analysis.analyser
    ]
    unchanged = (
        point is not None
        and ours
        and ours[-1] is rows[-1]
        and (rows[-1].posX, rows[-1].posY) == point
        and registry[rows[-1].blSamplePositionId].blSampleImageId == image.blSampleImageId
    )
    for row in ours[:-1] if unchanged else ours:
        session.delete(session.get(t.BLSamplePosition, row.blSamplePositionId))
        session.delete(registry.pop(row.blSamplePositionId))
    if unchanged:
        return DispenseOutcome(rows[-1].blSamplePositionId)
    if point is None:
        return DispenseOutcome(None)
    position = t.BLSamplePosition(
        blSampleId=image.blSampleId,
        posX=point[0],
        posY=point[1],
        positionType=POSITION_TYPE_DISPENSING,
        recordTimeStamp=datetime.datetime.now(),
    )
    session.add(position)
    session.flush()
    session.add(
        ChimpIspybRow(
            tableName=TABLE,
            rowId=position.blSamplePositionId,
            blSampleId=image.blSampleId,
            blSampleImageId=image.blSampleImageId,
            analyser=analysis.analyser,
            posX=point[0],
            posY=point[1],
            createdAt=now,
        )
    )
    return DispenseOutcome(position.blSamplePositionId)


def _registry(session: Session, sample_id: int, existing: set[int]) -> dict[int, ChimpIspybRow]:
    """The worker's entries for the sample's dispense rows; entries of vanished rows go."""
    registry = {}
    for entry in session.scalars(
        select(ChimpIspybRow).where(
            ChimpIspybRow.tableName == TABLE, ChimpIspybRow.blSampleId == sample_id
        )
    ):
        if entry.rowId in existing:
            registry[entry.rowId] = entry
        else:
            session.delete(entry)
    return registry
