"""Which images of an inspection exist, which still need work, and completing it exactly once.

Completion is decided by the database, not by any worker's memory: when every BLSampleImage of
the inspection has a ``done`` or ``failed`` row, a conditional ``UPDATE ... WHERE state =
'pending'`` flips ``chimp_inspection`` to done. Racing workers may all see the last image
finished, but the row lock lets exactly one UPDATE match, so exactly one caller gets True and
publishes the results-ready event.

A re-published event that changes the counts of an inspection already done (a repaired image
now done) recounts its summary and owes its announcement again: ``try_complete_inspection``
returns True for it too, so the caller publishes results-ready once more. An event that
changes nothing announces nothing.

Announcing is the second phase: the completion commit and the publish cannot share a
transaction, so ``resultsPublishedAt`` is set only after the broker confirmed results-ready.
A worker killed in between leaves the inspection done with ``resultsPublishedAt`` NULL, which
``results_pending_publication`` reports to whoever handles the redelivered message.

Which images still need work is decided here once (``work_reason``), for the worker planning
an event and for a replay listing a backlog alike: no result yet, a failed attempt, or a done
result that is stale (``stale_reason``: other model files, or another target rule).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Update, case, func, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import InspectionNotVisibleError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import transaction
from chimp_worker.ispyb.worker_tables import ChimpImageModel, ChimpImageResult, ChimpInspection
from chimp_worker.ispyb.writer import utcnow


@dataclass(frozen=True)
class InspectionImage:
    """One drop image of an inspection, with what fetching and geometry need."""

    blSampleImageId: int
    blSampleId: int
    imageFullPath: str | None
    micronsPerPixelX: float | None
    micronsPerPixelY: float | None
    location: str | None  # BLSample.location: the drop's linear index on the plate


def _rows_updated(session: Session, statement: Update) -> int:
    """How many rows an UPDATE matched: the compare-and-set answer the rules below rely on."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def _require_inspection(session: Session, inspection_id: int) -> None:
    found = session.scalar(
        select(t.ContainerInspection.containerInspectionId).where(
            t.ContainerInspection.containerInspectionId == inspection_id
        )
    )
    if found is None:
        raise InspectionNotVisibleError(
            f"ContainerInspection {inspection_id} is not visible (yet) in the database"
        )


def inspection_images(
    session_factory: sessionmaker[Session], inspection_id: int
) -> list[InspectionImage]:
    """Every BLSampleImage of the inspection, by id; raises when the inspection is not there."""
    with transaction(session_factory) as session:
        _require_inspection(session, inspection_id)
        rows = session.execute(
            select(
                t.BLSampleImage.blSampleImageId,
                t.BLSampleImage.blSampleId,
                t.BLSampleImage.imageFullPath,
                t.BLSampleImage.micronsPerPixelX,
                t.BLSampleImage.micronsPerPixelY,
                t.BLSample.location,
            )
            # Outer: an image whose BLSample is gone (an old clean-up without FK checks) is
            # still the inspection's; it fails with the database's refusal, and completes.
            .outerjoin(t.BLSample, t.BLSample.blSampleId == t.BLSampleImage.blSampleId)
            .where(t.BLSampleImage.containerInspectionId == inspection_id)
            .order_by(t.BLSampleImage.blSampleImageId)
        ).all()
    return [InspectionImage(*row) for row in rows]


# --- which images need work (the one definition) --------------------------------------------

UNPROCESSED = "unprocessed"
FAILED = "failed"
MODEL_CHANGED = "model changed"
RULE_CHANGED = "rule changed"
REASONS = (UNPROCESSED, FAILED, MODEL_CHANGED, RULE_CHANGED)

_IN_CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit


def stale_reason(
    checksums: frozenset[str],
    current_checksums: frozenset[str] | None,
    rule: str | None,
    current_rule: str | None,
) -> str | None:
    """Why a done result is out of date (MODEL_CHANGED, RULE_CHANGED), or None.

    Its model files (by sha256) are compared with ``current_checksums``, its stored target
    ``rule`` (None: stored before results recorded one) with ``current_rule``; either None
    skips that comparison. New model files win over a new rule (the redo covers both).
    """
    if current_checksums is not None and checksums != current_checksums:
        return MODEL_CHANGED
    if current_rule is not None and rule != current_rule:
        return RULE_CHANGED
    return None


def work_reason(
    state: str | None,
    checksums: frozenset[str],
    current_checksums: frozenset[str] | None,
    rule: str | None = None,
    current_rule: str | None = None,
) -> str | None:
    """Why an image needs work (a REASONS value), or None when it is up to date.

    ``state`` is its ``chimp_image_result`` state (None: no row). A 'pending' row is an image
    planned but never finished: as unprocessed as no row at all.
    """
    if state == "done":
        return stale_reason(checksums, current_checksums, rule, current_rule)
    if state == "failed":
        return FAILED
    return UNPROCESSED


@dataclass(frozen=True)
class ImageState:
    """One BLSampleImage with the worker's state for it (no ``chimp_image_result`` row: None)."""

    containerInspectionId: int
    blSampleImageId: int
    state: str | None
    failureReason: str | None
    targetRule: str | None


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    unique = sorted(set(ids))
    for start in range(0, len(unique), _IN_CHUNK):
        yield unique[start : start + _IN_CHUNK]


def image_states(session: Session, inspection_ids: Sequence[int]) -> list[ImageState]:
    """Every image of the inspections with its result state, by inspection and image id."""
    found: list[ImageState] = []
    for chunk in _chunks(inspection_ids):
        rows = session.execute(
            select(
                t.BLSampleImage.containerInspectionId,
                t.BLSampleImage.blSampleImageId,
                ChimpImageResult.state,
                ChimpImageResult.failureReason,
                ChimpImageResult.targetRule,
            )
            .outerjoin(
                ChimpImageResult,
                ChimpImageResult.blSampleImageId == t.BLSampleImage.blSampleImageId,
            )
            .where(t.BLSampleImage.containerInspectionId.in_(chunk))
            .order_by(t.BLSampleImage.containerInspectionId, t.BLSampleImage.blSampleImageId)
        ).all()
        found.extend(ImageState(*row) for row in rows)
    return found


def image_model_checksums(
    session: Session, inspection_ids: Sequence[int]
) -> dict[int, frozenset[str]]:
    """blSampleImageId -> sha256 of the model files its stored result came from."""
    checksums: dict[int, set[str]] = {}
    for chunk in _chunks(inspection_ids):
        for image_id, sha in session.execute(
            select(ChimpImageModel.blSampleImageId, ChimpImageModel.sha256)
            .join(
                t.BLSampleImage,
                t.BLSampleImage.blSampleImageId == ChimpImageModel.blSampleImageId,
            )
            .where(t.BLSampleImage.containerInspectionId.in_(chunk))
        ):
            checksums.setdefault(int(image_id), set()).add(sha)
    return {image_id: frozenset(shas) for image_id, shas in checksums.items()}


def images_needing_work(
    session_factory: sessionmaker[Session],
    inspection_id: int,
    model_checksums: set[str] | None = None,
    *,
    include_failed: bool = True,
    target_rule: str | None = None,
) -> list[int]:
    """Image ids of the inspection that need work (``work_reason``), failed ones unless excluded.

    With ``model_checksums``, a done result whose model files (by sha256) are not exactly that
    set needs work too: that is how a model upgrade is replayed. With ``target_rule`` (the
    analyser's ``TargetRule`` value), so does a done result computed by another rule, or
    stored before results recorded one.
    """
    current = frozenset(model_checksums) if model_checksums is not None else None
    with transaction(session_factory) as session:
        _require_inspection(session, inspection_id)
        images = image_states(session, [inspection_id])
        checksums = image_model_checksums(session, [inspection_id]) if current is not None else {}
    needed = []
    for image in images:
        reason = work_reason(
            image.state,
            checksums.get(image.blSampleImageId, frozenset()),
            current,
            image.targetRule,
            target_rule,
        )
        if reason is None or (reason == FAILED and not include_failed):
            continue
        needed.append(image.blSampleImageId)
    return needed


def mark_images_pending(
    session_factory: sessionmaker[Session], inspection_id: int, image_ids: Iterable[int]
) -> int:
    """Record images as pending (planned, not yet processed); existing rows are left alone.

    Two workers planning the same event at once both find the rows missing and both insert:
    the insert ignores rows that appeared since (an upsert that changes nothing), so neither
    fails. Returns how many rows this call found missing.
    """
    wanted = set(image_ids)
    now = utcnow()
    with transaction(session_factory) as session:
        present = set(
            session.scalars(
                select(ChimpImageResult.blSampleImageId).where(
                    ChimpImageResult.blSampleImageId.in_(wanted)
                )
            )
        )
        missing = sorted(wanted - present)
        if missing:
            rows = [
                {
                    "blSampleImageId": image_id,
                    "containerInspectionId": inspection_id,
                    "state": "pending",
                    "attempts": 0,
                    "createdAt": now,
                    "updatedAt": now,
                }
                for image_id in missing
            ]
            session.execute(_insert_leaving_existing(session, ChimpImageResult), rows)
    return len(missing)


def _insert_leaving_existing(session: Session, model: type[Any]) -> Any:
    """``INSERT`` that leaves a row with the same key as it is (MariaDB, SQLite)."""
    table = model.__table__
    if session.get_bind().dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    statement = mysql_insert(table)
    key = table.primary_key.columns[0]
    return statement.on_duplicate_key_update({key.name: key})  # assigns itself: no change


def _ensure_inspection_row(session_factory: sessionmaker[Session], inspection_id: int) -> None:
    try:
        with transaction(session_factory) as session:
            if session.get(ChimpInspection, inspection_id) is None:
                session.add(
                    ChimpInspection(
                        containerInspectionId=inspection_id, state="pending", createdAt=utcnow()
                    )
                )
    except IntegrityError:
        pass  # another worker inserted it first: exactly what we wanted


def try_complete_inspection(session_factory: sessionmaker[Session], inspection_id: int) -> bool:
    """Mark the inspection done if every image is done or failed; True only for the winner.

    An inspection already done is completed *again* -- counts and ``completedAt`` refreshed,
    results-ready owed once more (``resultsPublishedAt`` cleared), True for the caller whose
    update applied -- when its stored counts are out of date: an image that had failed is done
    now (or the reverse). Two workers racing to finish the last images of a plate complete it
    once, as before; new results that leave the counts as they were (a replay with new model
    files) are announced by the replay, which reopens the inspection.
    """
    _ensure_inspection_row(session_factory, inspection_id)
    with transaction(session_factory) as session:
        total, done, failed = session.execute(
            select(
                func.count(t.BLSampleImage.blSampleImageId),
                func.coalesce(func.sum(case((ChimpImageResult.state == "done", 1), else_=0)), 0),
                func.coalesce(func.sum(case((ChimpImageResult.state == "failed", 1), else_=0)), 0),
            )
            .select_from(t.BLSampleImage)
            .outerjoin(
                ChimpImageResult,
                ChimpImageResult.blSampleImageId == t.BLSampleImage.blSampleImageId,
            )
            .where(t.BLSampleImage.containerInspectionId == inspection_id)
        ).one()
        if total == 0 or done + failed < total:
            return False
        summary = {
            "state": "done",
            "imageCount": total,
            "doneCount": done,
            "failedCount": failed,
            "completedAt": utcnow(),
            "resultsPublishedAt": None,
        }
        changed = _rows_updated(
            session,
            update(ChimpInspection)
            .where(ChimpInspection.containerInspectionId == inspection_id)
            .where(ChimpInspection.state == "pending")
            .values(**summary)
            .execution_options(synchronize_session=False),
        )
        if changed == 1:
            return True
        refreshed = _rows_updated(
            session,
            update(ChimpInspection)
            .where(
                ChimpInspection.containerInspectionId == inspection_id,
                ChimpInspection.state == "done",
                or_(
                    ChimpInspection.imageCount != total,
                    ChimpInspection.doneCount != done,
                    ChimpInspection.failedCount != failed,
                ),
            )
            .values(**summary)
            .execution_options(synchronize_session=False),
        )
        return refreshed == 1


def results_pending_publication(
    session_factory: sessionmaker[Session],
    inspection_id: int,
    *,
    completed_before: datetime.datetime | None = None,
) -> bool:
    """True when the inspection is done but no results-ready for it was confirmed yet.

    With ``completed_before`` (naive UTC), only a completion at or before that time counts:
    a fresh completion is its winner's to announce, an old unannounced one is orphaned.
    """
    with transaction(session_factory) as session:
        row = session.execute(
            select(ChimpInspection.completedAt).where(
                ChimpInspection.containerInspectionId == inspection_id,
                ChimpInspection.state == "done",
                ChimpInspection.resultsPublishedAt.is_(None),
            )
        ).one_or_none()
    if row is None:
        return False
    completed_at = row[0]
    return completed_before is None or (
        completed_at is not None and completed_at <= completed_before
    )


def mark_results_published(session_factory: sessionmaker[Session], inspection_id: int) -> bool:
    """Record that the broker confirmed results-ready; False if already recorded (or reopened)."""
    with transaction(session_factory) as session:
        changed = _rows_updated(
            session,
            update(ChimpInspection)
            .where(ChimpInspection.containerInspectionId == inspection_id)
            .where(ChimpInspection.state == "done")
            .where(ChimpInspection.resultsPublishedAt.is_(None))
            .values(resultsPublishedAt=utcnow())
            .execution_options(synchronize_session=False),
        )
        return changed == 1


def reopen_inspection(session_factory: sessionmaker[Session], inspection_id: int) -> bool:
    """Set a done inspection back to pending (a replay), so its completion fires once more."""
    with transaction(session_factory) as session:
        changed = _rows_updated(
            session,
            update(ChimpInspection)
            .where(ChimpInspection.containerInspectionId == inspection_id)
            .where(ChimpInspection.state == "done")
            .values(state="pending", completedAt=None, resultsPublishedAt=None)
            .execution_options(synchronize_session=False),
        )
        return changed == 1
