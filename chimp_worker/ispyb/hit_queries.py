"""Staff queries over the drops' time courses: crystal hits, ranked by promise.

Everything comes from ``chimp_drop_course`` (one row per drop) and ``chimp_drop_inspection``
(one per drop and inspection), joined to ISPyB for the plate's barcode, visit and geometry.
The SQL lives in named constants written to run unchanged on MariaDB and SQLite; docs/hits.md
quotes it so staff can run it by hand.

Rank is the drop's place on its plate by promise (``hits.course.rank_by_promise``): computed
over every drop of the plate, so a filtered listing keeps each drop's plate rank.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import NotFoundError
from chimp_worker.ispyb.database import translate_db_errors
from chimp_worker.ispyb.queries import as_datetime
from chimp_worker.plate_layout import PlateLayout

# --- SQL (quoted in docs/hits.md) -------------------------------------------------------------

# Every drop with a time course, with its plate, visit and plate geometry.
COURSES_SQL = """
SELECT c.blSampleId, s.location, c.containerId, ct.barcode,
       p.proposalCode, p.proposalNumber, bs.visit_number,
       typ.capacity, typ.wellPerRow, typ.dropPerWellX, typ.dropPerWellY, typ.wellDrop,
       c.inspections, c.firstHitInspectionId, c.firstHitInspection, c.firstHitAt,
       c.firstHitScore, c.firstHitAreaUm2, c.latestInspectionId, c.latestInspection, c.latestAt,
       c.isHit, c.score, c.pCrystal, c.crystalCount, c.crystalAreaPx, c.crystalAreaUm2,
       c.growthUm2, c.growthFactor, c.promise
FROM chimp_drop_course c
JOIN BLSample s ON s.blSampleId = c.blSampleId
JOIN Container ct ON ct.containerId = c.containerId
LEFT JOIN ContainerType typ
       ON typ.containerTypeId = ct.containerTypeId
       OR (ct.containerTypeId IS NULL AND typ.name = ct.containerType)
LEFT JOIN BLSession bs ON bs.sessionId = ct.sessionId
LEFT JOIN Proposal p ON p.proposalId = bs.proposalId
"""

# A drop's hit observations at or after a time (for --since without --new).
HITS_SINCE_SQL = """
SELECT DISTINCT o.blSampleId
FROM chimp_drop_inspection o
WHERE o.containerId IN :containerIds AND o.isHit = 1 AND o.inspectedAt >= :since
"""

# The time course of drops, inspection by inspection (for the report and --format json).
OBSERVATIONS_SQL = """
SELECT o.blSampleId, o.containerInspectionId, o.inspectionNumber, o.inspectedAt,
       o.blSampleImageId, o.pCrystal, o.crystalCount, o.crystalAreaPx, o.crystalAreaUm2,
       o.hitScore, o.isHit
FROM chimp_drop_inspection o
WHERE o.containerId IN :containerIds
ORDER BY o.blSampleId, o.inspectionNumber
"""

# Plates a selection names, with or without a time course yet (for --refresh).
PLATES_SQL = """
SELECT DISTINCT ct.containerId
FROM Container ct
JOIN ContainerInspection ci ON ci.containerId = ct.containerId
LEFT JOIN BLSession bs ON bs.sessionId = ct.sessionId
LEFT JOIN Proposal p ON p.proposalId = bs.proposalId
WHERE 1 = 1
"""

_VISIT = re.compile(r"^([A-Za-z]+)(\d+)-(\d+)$")
_IN_CHUNK = 500


@dataclass(frozen=True)
class HitFilters:
    """Which drops to list. ``new``: first became a hit at or after ``since`` (without
    ``since``: at its plate's latest inspection). ``all_drops``: every drop with a course."""

    barcode: str | None = None
    visit: str | None = None
    since: dt.datetime | None = None
    new: bool = False
    all_drops: bool = False

    def __post_init__(self) -> None:
        if self.visit is not None and _VISIT.match(self.visit) is None:
            raise ValueError(f"visit {self.visit!r}: expected the form mx12345-6")


@dataclass(frozen=True)
class HitRow:
    """One drop as ``chimp-worker hits`` lists it."""

    barcode: str | None
    containerId: int
    visit: str | None
    blSampleId: int
    location: str | None
    well: str | None
    drop: int | None
    rank: int  # 1 = most promising on its plate
    promise: float
    isHit: bool  # a hit at its latest inspection
    firstHitInspection: int | None  # 1-based, time order
    firstHitInspectionId: int | None
    firstHitAt: dt.datetime | None
    firstHitScore: float | None
    score: float  # at the latest inspection
    pCrystal: float | None
    crystalCount: int
    crystalAreaPx: int
    crystalAreaUm2: float | None
    growthUm2: float | None
    growthFactor: float | None
    latestInspection: int
    latestInspectionId: int
    latestAt: dt.datetime | None
    inspections: int


@dataclass(frozen=True)
class CoursePoint:
    """One point of a drop's time course."""

    containerInspectionId: int
    inspectionNumber: int
    inspectedAt: dt.datetime | None
    blSampleImageId: int
    pCrystal: float | None
    crystalCount: int
    crystalAreaUm2: float | None
    score: float
    isHit: bool


def _visit(row: RowMapping) -> str | None:
    if not row["proposalCode"] or not row["proposalNumber"]:
        return None
    suffix = f"-{row['visit_number']}" if row["visit_number"] is not None else ""
    return f"{row['proposalCode']}{row['proposalNumber']}{suffix}"


def _well_and_drop(row: RowMapping) -> tuple[str | None, int | None]:
    layout = PlateLayout.from_container_type(
        capacity=row["capacity"],
        well_per_row=row["wellPerRow"],
        drop_per_well_x=row["dropPerWellX"],
        drop_per_well_y=row["dropPerWellY"],
        well_drop=row["wellDrop"],
    )
    try:
        position = layout.locate(int(row["location"]))
    except (TypeError, ValueError):
        return None, None
    return position.well, position.drop


def _location_order(location: str | None) -> int:
    if location is None:
        return 10**9
    try:
        return int(location)
    except (TypeError, ValueError):
        return 10**9


def _ranked(rows: Sequence[RowMapping]) -> dict[int, int]:
    """blSampleId -> rank on its plate: hits now first, then promise, then plate order."""
    by_plate: dict[int, list[RowMapping]] = defaultdict(list)
    for row in rows:
        by_plate[int(row["containerId"])].append(row)
    ranks = {}
    for plate_rows in by_plate.values():
        ordered = sorted(
            plate_rows,
            key=lambda r: (
                not bool(r["isHit"]),
                -float(r["promise"]),
                _location_order(r["location"]),
                int(r["blSampleId"]),
            ),
        )
        for rank, row in enumerate(ordered, start=1):
            ranks[int(row["blSampleId"])] = rank
    return ranks


def _plate_filters(filters: HitFilters) -> tuple[str, dict[str, Any]]:
    """SQL conditions and parameters for the barcode and visit filters (aliases ct, bs, p)."""
    sql = ""
    params: dict[str, Any] = {}
    if filters.barcode is not None:
        sql += " AND ct.barcode = :barcode"
        params["barcode"] = filters.barcode
    if filters.visit is not None:
        match = _VISIT.match(filters.visit)
        assert match is not None  # checked in HitFilters
        sql += (
            " AND p.proposalCode = :proposalCode AND p.proposalNumber = :proposalNumber"
            " AND bs.visit_number = :visitNumber"
        )
        params.update(
            proposalCode=match.group(1),
            proposalNumber=match.group(2),
            visitNumber=int(match.group(3)),
        )
    return sql, params


def _course_rows(session: Session, filters: HitFilters) -> list[RowMapping]:
    conditions, params = _plate_filters(filters)
    sql = COURSES_SQL + " WHERE 1 = 1" + conditions
    return list(session.execute(text(sql), params).mappings().all())


def plates_for(session_factory: sessionmaker[Session], filters: HitFilters) -> list[int]:
    """containerIds of the plates the filters select; ``since`` keeps plates imaged since."""
    conditions, params = _plate_filters(filters)
    if filters.since is not None:
        conditions += " AND COALESCE(ci.completedTimeStamp, ci.blTimeStamp) >= :since"
        params["since"] = filters.since
    with translate_db_errors(), session_factory() as session:
        rows = session.execute(text(PLATES_SQL + conditions), params).scalars().all()
    return sorted(int(row) for row in rows)


def _in_query(session: Session, sql: str, ids: Sequence[int], **params: Any) -> list[RowMapping]:
    statement = text(sql).bindparams(bindparam("containerIds", expanding=True))
    rows: list[RowMapping] = []
    unique = sorted(set(ids))
    for start in range(0, len(unique), _IN_CHUNK):
        chunk = unique[start : start + _IN_CHUNK]
        rows.extend(session.execute(statement, {"containerIds": chunk, **params}).mappings().all())
    return rows


def find_hits(session_factory: sessionmaker[Session], filters: HitFilters) -> list[HitRow]:
    """The drops ``filters`` ask for, by plate (barcode) then rank.

    Raises ``NotFoundError`` when a barcode is asked for that has no plate with a time course.
    """
    with translate_db_errors(), session_factory() as session:
        rows = _course_rows(session, filters)
        if filters.barcode is not None and not rows:
            _require_plate(session, filters.barcode)
        ranks = _ranked(rows)
        containers = [int(row["containerId"]) for row in rows]
        hit_since: set[int] | None = None
        if filters.since is not None and not filters.new:
            hit_since = {
                int(r["blSampleId"])
                for r in _in_query(session, HITS_SINCE_SQL, containers, since=filters.since)
            }
    latest_on_plate: dict[int, int] = defaultdict(int)
    for row in rows:
        container = int(row["containerId"])
        latest_on_plate[container] = max(latest_on_plate[container], int(row["latestInspection"]))
    listed = []
    for row in rows:
        sample = int(row["blSampleId"])
        first_at = as_datetime(row["firstHitAt"])
        if not filters.all_drops and row["firstHitInspectionId"] is None:
            continue
        if filters.new:
            if row["firstHitInspectionId"] is None:
                continue
            if filters.since is not None:
                if first_at is None or first_at < filters.since:
                    continue
            elif row["firstHitInspection"] != latest_on_plate[int(row["containerId"])]:
                continue
        elif hit_since is not None and sample not in hit_since:
            continue
        listed.append(_hit_row(row, ranks[sample]))
    return sorted(listed, key=lambda r: (r.barcode or "", r.containerId, r.rank))


def _require_plate(session: Session, barcode: str) -> None:
    found = session.execute(
        text("SELECT containerId FROM Container WHERE barcode = :barcode"), {"barcode": barcode}
    ).first()
    if found is None:
        raise NotFoundError(f"no plate (Container) with barcode {barcode!r}")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _hit_row(row: RowMapping, rank: int) -> HitRow:
    well, drop = _well_and_drop(row)
    return HitRow(
        barcode=row["barcode"],
        containerId=int(row["containerId"]),
        visit=_visit(row),
        blSampleId=int(row["blSampleId"]),
        location=row["location"],
        well=well,
        drop=drop,
        rank=rank,
        promise=float(row["promise"]),
        isHit=bool(row["isHit"]),
        firstHitInspection=row["firstHitInspection"],
        firstHitInspectionId=row["firstHitInspectionId"],
        firstHitAt=as_datetime(row["firstHitAt"]),
        firstHitScore=_float(row["firstHitScore"]),
        score=float(row["score"]),
        pCrystal=_float(row["pCrystal"]),
        crystalCount=int(row["crystalCount"]),
        crystalAreaPx=int(row["crystalAreaPx"]),
        crystalAreaUm2=_float(row["crystalAreaUm2"]),
        growthUm2=_float(row["growthUm2"]),
        growthFactor=_float(row["growthFactor"]),
        latestInspection=int(row["latestInspection"]),
        latestInspectionId=int(row["latestInspectionId"]),
        latestAt=as_datetime(row["latestAt"]),
        inspections=int(row["inspections"]),
    )


def course_points(
    session_factory: sessionmaker[Session], container_ids: Sequence[int]
) -> dict[int, list[CoursePoint]]:
    """blSampleId -> its time course, oldest first, for the drops of these plates."""
    with translate_db_errors(), session_factory() as session:
        rows = _in_query(session, OBSERVATIONS_SQL, container_ids)
    points: dict[int, list[CoursePoint]] = defaultdict(list)
    for row in rows:
        points[int(row["blSampleId"])].append(
            CoursePoint(
                containerInspectionId=int(row["containerInspectionId"]),
                inspectionNumber=int(row["inspectionNumber"]),
                inspectedAt=as_datetime(row["inspectedAt"]),
                blSampleImageId=int(row["blSampleImageId"]),
                pCrystal=_float(row["pCrystal"]),
                crystalCount=int(row["crystalCount"]),
                crystalAreaUm2=_float(row["crystalAreaUm2"]),
                score=float(row["hitScore"]),
                isHit=bool(row["isHit"]),
            )
        )
    return points
