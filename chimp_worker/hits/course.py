"""A drop's time course: its verdicts across inspections, when it first became a hit, how its
crystals grew since, and how promising it is. Pure functions on plain data.

Inspections are numbered 1, 2, 3... in time order over the plate's Completed inspections, so
"first hit at inspection 3" means the third time the plate was imaged. Growth is measured on
the counted crystals' summed mask area, in um^2 when micronsPerPixel is known (else pixels).

**Promise** (0..1) orders a plate's drops for a scientist to look at, best first:

    promise = 0.5 * score + 0.25 * size + 0.25 * growth

``score`` is the latest hit score; ``size`` the largest counted crystal's equivalent diameter
over ``FULL_SIZE_UM`` (capped at 1); ``growth`` the relative growth of the crystal area since
the first hit (doubling or more counts 1). Drops that are hits now rank before drops that are
not; ties keep plate order (location). Sizes without micronsPerPixel use pixels as microns.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FULL_SIZE_UM = 100.0  # a crystal this wide (equivalent diameter) gets the full size term
PROMISE_WEIGHTS = (0.5, 0.25, 0.25)  # score, size, growth


@dataclass(frozen=True)
class Observation:
    """One drop in one inspection, as the hit rule saw it."""

    containerInspectionId: int
    inspection_number: int  # 1-based, time order on the plate
    inspected_at: dt.datetime | None
    blSampleImageId: int
    p_crystal: float | None
    crystal_count: int
    crystal_area_px: int
    crystal_area_um2: float | None
    largest_crystal_um2: float | None
    best_crystal_score: float | None
    score: float
    hit: bool


@dataclass(frozen=True)
class DropCourse:
    """What a drop's observations add up to."""

    observations: tuple[Observation, ...]  # time order
    first_hit: Observation | None
    latest: Observation
    growth_um2: float | None  # latest crystal area minus the first hit's (None: no hit yet)
    growth_factor: float | None  # latest area / first hit's area (None: no hit or area 0)
    promise: float

    @property
    def is_hit(self) -> bool:
        """A hit now (at the latest inspection observed)."""
        return self.latest.hit

    @property
    def ever_hit(self) -> bool:
        return self.first_hit is not None


def _area(observation: Observation) -> float:
    """Counted crystal area in um^2, or in pixels when micronsPerPixel is unknown."""
    if observation.crystal_area_um2 is not None:
        return observation.crystal_area_um2
    return float(observation.crystal_area_px)


def size_term(largest_um2: float | None) -> float:
    """The largest crystal's equivalent diameter over ``FULL_SIZE_UM``, capped at 1."""
    if not largest_um2 or largest_um2 <= 0:
        return 0.0
    return min(1.0, 2.0 * math.sqrt(largest_um2 / math.pi) / FULL_SIZE_UM)


def growth_term(first_area: float, latest_area: float) -> float:
    """Relative growth since the first hit: 0 for none or shrinking, 1 from doubling on."""
    if first_area <= 0:
        return 1.0 if latest_area > 0 else 0.0
    return min(1.0, max(0.0, (latest_area - first_area) / first_area))


def promise_score(
    score: float, largest_um2: float | None, first_area: float, latest: float
) -> float:
    w_score, w_size, w_growth = PROMISE_WEIGHTS
    value = (
        w_score * score
        + w_size * size_term(largest_um2)
        + w_growth * growth_term(first_area, latest)
    )
    return round(min(1.0, max(0.0, value)), 6)


def drop_course(observations: Iterable[Observation]) -> DropCourse:
    """Summarise one drop's observations (any order; at least one)."""
    ordered = tuple(
        sorted(observations, key=lambda o: (o.inspection_number, o.containerInspectionId))
    )
    if not ordered:
        raise ValueError("a drop course needs at least one observation")
    first_hit = next((o for o in ordered if o.hit), None)
    latest = ordered[-1]
    growth_um2 = growth_factor = None
    first_area = latest_area = 0.0
    if first_hit is not None:
        first_area, latest_area = _area(first_hit), _area(latest)
        growth_um2 = round(latest_area - first_area, 3)
        growth_factor = round(latest_area / first_area, 4) if first_area > 0 else None
    promise = promise_score(latest.score, latest.largest_crystal_um2, first_area, latest_area)
    return DropCourse(ordered, first_hit, latest, growth_um2, growth_factor, promise)


def rank_by_promise(courses: Sequence[tuple[int, DropCourse]]) -> list[tuple[int, DropCourse]]:
    """(location, course) pairs best first: hits now, then by promise, then plate order."""
    return sorted(courses, key=lambda item: (not item[1].is_hit, -item[1].promise, item[0]))
