"""The plate overview's input: plain frozen dataclasses, no SQL, no I/O.

The database adapter (``report.build``) fills these from ISPyB and the worker's tables; tests
build them by hand. Coordinates are (x, y) pixels of the original image from the top-left,
as in ISPyB and SynchWeb, so the drop view's SVG overlay uses them unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from chimp_worker.plate_layout import PlateLayout

# Processing states a drop can be in, as shown in the report (and in ``chimp-worker results``).
STATE_DONE = "done"
STATE_FAILED = "failed"
STATE_PENDING = "pending"
STATE_NO_IMAGE = "no image"

# ISPyB's CHIMP score-class name for the class the plate is coloured by (paper Figure 3).
CRYSTAL_CLASS = "crystal"


@dataclass(frozen=True)
class TargetMark:
    """An auto crystal target (BLSubSample source='auto', type='poi')."""

    x: float
    y: float
    blSubSampleId: int | None = None
    kept: str | None = None  # why re-processing kept it, e.g. "queued by staff"
    score: float | None = None  # the detector's score of the crystal behind it


@dataclass(frozen=True)
class DetectionMark:
    """A detector box, with the mask outline as a polygon when one was kept."""

    label: str  # "crystal" or "drop"
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    outline: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class DispenseMark:
    """The worker's dispense finding for the image, and the point SynchWeb shows for the drop
    (the sample's highest-id 'dispensing' row), which may be staff's."""

    status: str
    x: float | None = None
    y: float | None = None
    by: str | None = None  # "worker" or "staff": whose point x, y is


@dataclass(frozen=True)
class DropReport:
    """One drop in one inspection: its scores, targets, dispense point and image."""

    location: int
    blSampleId: int | None = None
    blSampleImageId: int | None = None
    state: str = STATE_PENDING
    failure_reason: str | None = None
    schema_name: str | None = None
    probabilities: Mapping[str, float] = field(default_factory=dict)  # ISPyB scoreClass names
    targets: tuple[TargetMark, ...] = ()
    detections: tuple[DetectionMark, ...] = ()
    dispense: DispenseMark | None = None
    image_width: int | None = None
    image_height: int | None = None
    image_uri: str | None = None  # a data: URI of a downscaled JPEG; None when not embedded
    full_image_url: str | None = None  # where the full-size image can be opened (file:, http:)

    @property
    def p_crystal(self) -> float | None:
        return self.probabilities.get(CRYSTAL_CLASS)

    @property
    def top_class(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=lambda name: self.probabilities[name])


@dataclass(frozen=True)
class InspectionReport:
    """One ContainerInspection of the plate: a frame of the time course."""

    containerInspectionId: int
    state: str | None = None
    completed: dt.datetime | None = None
    processing: str = STATE_PENDING  # the worker's per-inspection state
    drops: tuple[DropReport, ...] = ()

    @property
    def label(self) -> str:
        when = self.completed.strftime("%Y-%m-%d %H:%M") if self.completed else "not completed"
        return f"Inspection {self.containerInspectionId} ({when})"

    def drop_at(self, location: int) -> DropReport | None:
        for drop in self.drops:
            if drop.location == location:
                return drop
        return None


@dataclass(frozen=True)
class CourseMark:
    """One point of a drop's time course: its verdict at one inspection."""

    containerInspectionId: int
    number: int  # 1-based, time order
    p_crystal: float | None
    crystal_count: int
    score: float
    hit: bool
    crystal_area_um2: float | None = None


@dataclass(frozen=True)
class DropRank:
    """A drop's standing on the plate: hit or not, when it became one, its promise."""

    location: int
    rank: int  # 1 = most promising
    promise: float
    is_hit: bool  # at its latest inspection
    score: float
    crystal_count: int
    crystal_area_um2: float | None
    first_hit_inspection_id: int | None
    first_hit_number: int | None


@dataclass(frozen=True)
class PlateReport:
    """Everything the HTML page and the PNG show for one plate."""

    barcode: str
    layout: PlateLayout
    inspections: tuple[InspectionReport, ...]  # oldest first; the page opens on the last
    containerId: int | None = None
    container_type: str | None = None
    generated_at: dt.datetime | None = None
    analysers: tuple[str, ...] = ()  # schema names seen, e.g. ("CHIMP",): never mistake them
    notes: tuple[str, ...] = ()
    colour_scale: str = "viridis"  # "viridis" (colour-blind safe) or "red-green" (the paper's)
    courses: Mapping[int, tuple[CourseMark, ...]] = field(default_factory=dict)  # by location
    ranking: tuple[DropRank, ...] = ()  # every drop with a time course, best first
    unreadable_pictures: int = 0  # drop pictures that could not be read (named in notes)

    def new_hits(self, inspection_id: int) -> tuple[DropRank, ...]:
        """The drops that first became hits at this inspection, best first."""
        return tuple(r for r in self.ranking if r.first_hit_inspection_id == inspection_id)

    def inspection(self, inspection_id: int) -> InspectionReport:
        for inspection in self.inspections:
            if inspection.containerInspectionId == inspection_id:
                return inspection
        raise KeyError(inspection_id)
