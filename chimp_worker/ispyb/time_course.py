"""Each drop's time course in the worker's own tables, updated when an inspection completes.

``refresh_time_course`` reads the completed inspection's stored results (``hit_evidence``:
P(crystal) from ISPyB's auto-score rows, the crystals from ``chimp_detection``,
micronsPerPixel from BLSampleImage), calls a hit per image with the configured rule
(``hits.rules``), writes one
``chimp_drop_inspection`` row per drop, then recomputes every drop's ``chimp_drop_course`` row
of the plate (first hit, latest state, growth, promise). Rows are written only where a value
changed, so a re-run -- a redelivered message, a replay -- leaves every row as it was.

Inspections are numbered in time order (``COALESCE(completedTimeStamp, blTimeStamp,
scheduledTimeStamp)``, then id) over the plate's Completed inspections and those the worker
finished. Only done images count; a failed image leaves a gap in its drop's course.

Reads only what the worker's grants allow (docs/reliability.md): ContainerInspection,
Container, ContainerType, BLSample, BLSampleImage, the auto-score tables and ``chimp_*``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import DatabaseUnavailableError, InspectionNotVisibleError
from chimp_worker.hits.course import DropCourse, Observation, drop_course
from chimp_worker.hits.policy import HitPolicy
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import transaction
from chimp_worker.ispyb.hit_evidence import Observed, observe
from chimp_worker.ispyb.worker_tables import (
    ChimpDropCourse,
    ChimpDropInspection,
    ChimpInspection,
)
from chimp_worker.ispyb.writer import utcnow
from chimp_worker.plate_layout import PlateLayout


@dataclass(frozen=True)
class DropHit:
    """A drop that is (or became) a hit, as announced and listed for staff."""

    blSampleId: int
    location: str | None  # BLSample.location, the drop's linear index on the plate
    well: str | None
    drop: int | None
    containerInspectionId: int  # the inspection it first became a hit at
    inspectionNumber: int  # 1-based, time order
    inspectedAt: dt.datetime | None
    score: float
    crystalCount: int
    crystalAreaUm2: float | None


@dataclass(frozen=True)
class TimeCourseUpdate:
    """What one refresh did, and the drops that first became hits at the inspection."""

    containerInspectionId: int
    containerId: int
    barcode: str | None
    inspections_computed: tuple[int, ...]
    rows_written: int  # observation and course rows inserted, updated or deleted
    new_hits: tuple[DropHit, ...]


@dataclass(frozen=True)
class _Inspection:
    containerInspectionId: int
    number: int
    at: dt.datetime | None
    done: bool


@dataclass(frozen=True)
class _Plate:
    containerId: int
    barcode: str | None
    layout: PlateLayout


def refresh_time_course(
    session_factory: sessionmaker[Session],
    inspection_id: int,
    policy: HitPolicy,
    *,
    full: bool = False,
) -> TimeCourseUpdate:
    """Compute the completed inspection's verdicts and the plate's drop courses; idempotent.

    Also computes any other done inspection of the plate that has no rows yet (results from
    before this feature); ``full`` recomputes every done inspection (new thresholds). Two
    workers completing inspections of one plate at once may collide on a new row: that is
    reported as ``DatabaseUnavailableError`` so the unit is retried, then finds the row.
    """
    try:
        with transaction(session_factory) as session:
            return _refresh(session, inspection_id, policy, full=full)
    except IntegrityError as error:
        raise DatabaseUnavailableError(
            f"time course of inspection {inspection_id} updated concurrently ({error.orig}); "
            "retrying"
        ) from error


def refresh_plate(
    session_factory: sessionmaker[Session], container_id: int, policy: HitPolicy
) -> TimeCourseUpdate | None:
    """Recompute a whole plate's time course (every done inspection); None when none is done."""
    with transaction(session_factory) as session:
        latest = session.scalar(
            select(t.ContainerInspection.containerInspectionId)
            .join(
                ChimpInspection,
                ChimpInspection.containerInspectionId
                == t.ContainerInspection.containerInspectionId,
            )
            .where(t.ContainerInspection.containerId == container_id)
            .where(ChimpInspection.state == "done")
            .order_by(t.ContainerInspection.containerInspectionId.desc())
            .limit(1)
        )
    if latest is None:
        return None
    return refresh_time_course(session_factory, latest, policy, full=True)


def new_hits(session_factory: sessionmaker[Session], inspection_id: int) -> tuple[DropHit, ...]:
    """The drops whose first hit is this inspection, best first (read only)."""
    with transaction(session_factory) as session:
        plate = _plate_of(session, inspection_id)
        return _new_hits(session, plate, inspection_id)


# --- the refresh, inside one transaction ------------------------------------------------------


def _refresh(
    session: Session, inspection_id: int, policy: HitPolicy, *, full: bool
) -> TimeCourseUpdate:
    plate = _plate_of(session, inspection_id)
    inspections = _numbered_inspections(session, plate.containerId, inspection_id)
    have_rows = set(
        session.scalars(
            select(ChimpDropInspection.containerInspectionId)
            .where(ChimpDropInspection.containerId == plate.containerId)
            .distinct()
        )
    )
    compute = [
        i.containerInspectionId
        for i in inspections.values()
        if i.done
        and (
            full
            or i.containerInspectionId == inspection_id
            or i.containerInspectionId not in have_rows
        )
    ]
    observed = observe(session, compute, policy)
    written = _store_observations(session, plate.containerId, compute, inspections, observed)
    written += _store_courses(session, plate.containerId)
    return TimeCourseUpdate(
        containerInspectionId=inspection_id,
        containerId=plate.containerId,
        barcode=plate.barcode,
        inspections_computed=tuple(compute),
        rows_written=written,
        new_hits=_new_hits(session, plate, inspection_id),
    )


def _plate_of(session: Session, inspection_id: int) -> _Plate:
    row = session.execute(
        select(
            t.Container.containerId,
            t.Container.barcode,
            t.ContainerType.capacity,
            t.ContainerType.wellPerRow,
            t.ContainerType.dropPerWellX,
            t.ContainerType.dropPerWellY,
            t.ContainerType.wellDrop,
        )
        .select_from(t.ContainerInspection)
        .join(t.Container, t.Container.containerId == t.ContainerInspection.containerId)
        .outerjoin(
            t.ContainerType,
            or_(
                t.ContainerType.containerTypeId == t.Container.containerTypeId,
                (t.Container.containerTypeId.is_(None))
                & (t.ContainerType.name == t.Container.containerType),
            ),
        )
        .where(t.ContainerInspection.containerInspectionId == inspection_id)
    ).first()
    if row is None:
        raise InspectionNotVisibleError(
            f"ContainerInspection {inspection_id} is not visible (yet) in the database"
        )
    layout = PlateLayout.from_container_type(
        capacity=row.capacity,
        well_per_row=row.wellPerRow,
        drop_per_well_x=row.dropPerWellX,
        drop_per_well_y=row.dropPerWellY,
        well_drop=row.wellDrop,
    )
    return _Plate(int(row.containerId), row.barcode, layout)


def _numbered_inspections(
    session: Session, container_id: int, current: int
) -> dict[int, _Inspection]:
    """The plate's Completed (or worker-done) inspections, numbered 1.. in time order."""
    ci = t.ContainerInspection
    rows = session.execute(
        select(
            ci.containerInspectionId,
            ci.state,
            ci.completedTimeStamp,
            ci.blTimeStamp,
            ci.scheduledTimeStamp,
            ChimpInspection.state.label("worker_state"),
        )
        .outerjoin(
            ChimpInspection, ChimpInspection.containerInspectionId == ci.containerInspectionId
        )
        .where(ci.containerId == container_id)
    ).all()
    kept = [
        row
        for row in rows
        if row.state == "Completed"
        or row.worker_state == "done"
        or row.containerInspectionId == current
    ]

    def when(row: Any) -> dt.datetime | None:
        return row.completedTimeStamp or row.blTimeStamp or row.scheduledTimeStamp

    kept.sort(key=lambda row: (when(row) is None, when(row) or dt.datetime.min, row[0]))
    return {
        int(row.containerInspectionId): _Inspection(
            int(row.containerInspectionId), number, when(row), row.worker_state == "done"
        )
        for number, row in enumerate(kept, start=1)
    }


# --- storing -----------------------------------------------------------------------------------


def _store_observations(
    session: Session,
    container_id: int,
    computed: Sequence[int],
    inspections: Mapping[int, _Inspection],
    observed: Sequence[Observed],
) -> int:
    """Upsert the computed inspections' rows, renumber the others; write only what changed."""
    existing = {
        (row.blSampleId, row.containerInspectionId): row
        for row in session.scalars(
            select(ChimpDropInspection).where(ChimpDropInspection.containerId == container_id)
        )
    }
    now = utcnow()
    written = 0
    fresh: set[tuple[int, int]] = set()
    for item in observed:
        inspection = inspections[item.containerInspectionId]
        wanted = {
            "containerId": container_id,
            "blSampleImageId": item.blSampleImageId,
            "inspectionNumber": inspection.number,
            "inspectedAt": inspection.at,
            "analyser": item.analyser,
            **item.values,
        }
        key = (item.blSampleId, item.containerInspectionId)
        fresh.add(key)
        row = existing.get(key)
        if row is None:
            session.add(
                ChimpDropInspection(
                    blSampleId=item.blSampleId,
                    containerInspectionId=item.containerInspectionId,
                    updatedAt=now,
                    **wanted,
                )
            )
            written += 1
        elif _assign_changes(row, wanted):
            row.updatedAt = now
            written += 1
    recomputed = set(computed)
    for key, row in existing.items():
        if key in fresh:
            continue
        current = inspections.get(row.containerInspectionId)
        if row.containerInspectionId in recomputed or current is None:
            session.delete(row)  # its image is no longer done, or the inspection is gone
            written += 1
        elif _assign_changes(row, {"inspectionNumber": current.number, "inspectedAt": current.at}):
            row.updatedAt = now
            written += 1
    session.flush()
    return written


def _assign_changes(row: Any, wanted: Mapping[str, Any]) -> bool:
    changed = False
    for name, value in wanted.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _observation(row: ChimpDropInspection) -> Observation:
    return Observation(
        containerInspectionId=row.containerInspectionId,
        inspection_number=row.inspectionNumber,
        inspected_at=row.inspectedAt,
        blSampleImageId=row.blSampleImageId,
        p_crystal=row.pCrystal,
        crystal_count=row.crystalCount,
        crystal_area_px=row.crystalAreaPx,
        crystal_area_um2=row.crystalAreaUm2,
        largest_crystal_um2=row.largestCrystalUm2,
        best_crystal_score=row.bestCrystalScore,
        score=row.hitScore,
        hit=bool(row.isHit),
    )


def plate_courses(session: Session, container_id: int) -> dict[int, DropCourse]:
    """blSampleId -> the drop's course, from its stored observations."""
    by_sample: dict[int, list[Observation]] = defaultdict(list)
    for row in session.scalars(
        select(ChimpDropInspection).where(ChimpDropInspection.containerId == container_id)
    ):
        by_sample[row.blSampleId].append(_observation(row))
    return {sample: drop_course(observations) for sample, observations in by_sample.items()}


def _store_courses(session: Session, container_id: int) -> int:
    courses = plate_courses(session, container_id)
    existing = {
        row.blSampleId: row
        for row in session.scalars(
            select(ChimpDropCourse).where(ChimpDropCourse.containerId == container_id)
        )
    }
    now = utcnow()
    written = 0
    for sample_id, course in courses.items():
        first, latest = course.first_hit, course.latest
        wanted = {
            "containerId": container_id,
            "inspections": len(course.observations),
            "firstHitInspectionId": None if first is None else first.containerInspectionId,
            "firstHitInspection": None if first is None else first.inspection_number,
            "firstHitAt": None if first is None else first.inspected_at,
            "firstHitScore": None if first is None else first.score,
            "firstHitAreaUm2": None if first is None else first.crystal_area_um2,
            "latestInspectionId": latest.containerInspectionId,
            "latestInspection": latest.inspection_number,
            "latestAt": latest.inspected_at,
            "isHit": latest.hit,
            "score": latest.score,
            "pCrystal": latest.p_crystal,
            "crystalCount": latest.crystal_count,
            "crystalAreaPx": latest.crystal_area_px,
            "crystalAreaUm2": latest.crystal_area_um2,
            "growthUm2": course.growth_um2,
            "growthFactor": course.growth_factor,
            "promise": course.promise,
        }
        row = existing.pop(sample_id, None)
        if row is None:
            session.add(ChimpDropCourse(blSampleId=sample_id, updatedAt=now, **wanted))
            written += 1
        elif _assign_changes(row, wanted):
            row.updatedAt = now
            written += 1
    for row in existing.values():  # no observation left for this drop
        session.delete(row)
        written += 1
    session.flush()
    return written


def _new_hits(session: Session, plate: _Plate, inspection_id: int) -> tuple[DropHit, ...]:
    rows = session.execute(
        select(ChimpDropCourse, t.BLSample.location)
        .join(t.BLSample, t.BLSample.blSampleId == ChimpDropCourse.blSampleId)
        .where(ChimpDropCourse.firstHitInspectionId == inspection_id)
    ).all()
    hits = []
    for course, location in rows:
        first = session.get(ChimpDropInspection, (course.blSampleId, inspection_id))
        if first is None:
            continue
        well, drop = locate(plate.layout, location)
        hits.append(
            (
                -(first.hitScore or 0.0),
                course.blSampleId,
                DropHit(
                    blSampleId=course.blSampleId,
                    location=location,
                    well=well,
                    drop=drop,
                    containerInspectionId=inspection_id,
                    inspectionNumber=first.inspectionNumber,
                    inspectedAt=first.inspectedAt,
                    score=first.hitScore,
                    crystalCount=first.crystalCount,
                    crystalAreaUm2=first.crystalAreaUm2,
                ),
            )
        )
    return tuple(hit for *_, hit in sorted(hits, key=lambda item: (item[0], item[1])))


def locate(layout: PlateLayout, location: str | None) -> tuple[str | None, int | None]:
    """Well name and drop number of a BLSample.location; (None, None) when it does not fit."""
    if location is None:
        return None, None
    try:
        position = layout.locate(int(location))
    except (TypeError, ValueError):
        return None, None
    return position.well, position.drop
