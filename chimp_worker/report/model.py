"""The plate overview's input: plain frozen dataclasses, no SQL, no I/O.

The database adapter (``report.build``) fills these from ISPyB and the worker's tables; tests
build them by hand. Coordinates are (x, y) pixels of the original image from the top-left,
as in ISPyB and SynchWeb, so the drop view's SVG overlay uses them unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# Processing states a drop can be in, as shown in the report (and in ``chimp-worker results``).
STATE_DONE = "done"
STATE_FAILED = "failed"
STATE_PENDING = "pending"
STATE_NO_IMAGE = "no image"

# ISPyB's CHIMP score-class name for the class the plate is coloured by (paper Figure 3).
CRYSTAL_CLASS = "crystal"


@dataclass(frozen=True)
class PlateLayout:
    """Where a BLSample.location sits on the plate, the way SynchWeb draws it.

    SynchWeb numbers drops row-major over wells (A1, A2, ... A12, B1, ...) and, within a well,
    row-major over a ``drops_x`` x ``drops_y`` grid; ``well_drop`` names the grid cell that
    holds the reservoir (SWISSCI 3 Drop: a 2 x 2 grid with one cell for the well), which gets
    no location. Location 1 is the first drop of well A1.
    """

    wells_per_row: int = 12
    rows: int = 8
    drops_x: int = 2
    drops_y: int = 1
    well_drop: int | None = None

    def __post_init__(self) -> None:
        for name in ("wells_per_row", "rows", "drops_x", "drops_y"):
            if getattr(self, name) < 1:
                raise ValueError(f"plate layout: {name} must be at least 1")
        if self.well_drop is not None and not 0 <= self.well_drop < self.drops_x * self.drops_y:
            raise ValueError(f"plate layout: well_drop {self.well_drop} is outside the drop grid")
        if self.drops_per_well < 1:
            raise ValueError("plate layout: no drop left in the well")

    @classmethod
    def from_container_type(
        cls,
        *,
        capacity: int | None,
        well_per_row: int | None,
        drop_per_well_x: int | None,
        drop_per_well_y: int | None,
        well_drop: int | None = None,
    ) -> PlateLayout:
        """Build from ContainerType columns; missing values fall back to a 96-well, 2-drop plate.

        ISPyB's ``capacity`` counts drops (CrystalQuickX: 96 wells x 2 drops = 192).
        """
        drops_x = drop_per_well_x or 2
        drops_y = drop_per_well_y or 1
        per_row = well_per_row or 12
        reservoir = well_drop if well_drop is not None and well_drop >= 0 else None
        per_well = drops_x * drops_y - (1 if reservoir is not None else 0)
        wells = capacity // per_well if capacity and per_well else 96
        rows = max(1, math.ceil(wells / per_row))
        return cls(per_row, rows, drops_x, drops_y, reservoir)

    @property
    def drops_per_well(self) -> int:
        return self.drops_x * self.drops_y - (1 if self.well_drop is not None else 0)

    @property
    def wells(self) -> int:
        return self.wells_per_row * self.rows

    @property
    def capacity(self) -> int:
        return self.wells * self.drops_per_well

    def well_name(self, well_index: int) -> str:
        """'A1' for well 0; rows past Z continue as AA, AB... (never reached by SBS plates)."""
        row, column = divmod(well_index, self.wells_per_row)
        letters = ""
        row += 1
        while row:
            row, remainder = divmod(row - 1, 26)
            letters = chr(65 + remainder) + letters
        return f"{letters}{column + 1}"

    def locate(self, location: int) -> DropPosition:
        """Well, drop number and grid cell of a 1-based BLSample.location."""
        if not 1 <= location <= self.capacity:
            raise ValueError(f"location {location} is outside a plate of {self.capacity} drops")
        well_index, drop_index = divmod(location - 1, self.drops_per_well)
        cell = drop_index
        if self.well_drop is not None and cell >= self.well_drop:
            cell += 1
        cell_y, cell_x = divmod(cell, self.drops_x)
        row, column = divmod(well_index, self.wells_per_row)
        return DropPosition(
            location=location,
            well_index=well_index,
            well=self.well_name(well_index),
            row=row,
            column=column,
            drop=drop_index + 1,
            cell_x=cell_x,
            cell_y=cell_y,
        )

    def location_of(self, well_index: int, cell_x: int, cell_y: int) -> int | None:
        """Inverse of ``locate`` for a grid cell; None for the reservoir cell."""
        cell = cell_y * self.drops_x + cell_x
        if self.well_drop is not None:
            if cell == self.well_drop:
                return None
            if cell > self.well_drop:
                cell -= 1
        return well_index * self.drops_per_well + cell + 1


@dataclass(frozen=True)
class DropPosition:
    """A location resolved on the plate: well 'B7', drop 2, grid cell (1, 0)."""

    location: int
    well_index: int
    well: str
    row: int
    column: int
    drop: int
    cell_x: int
    cell_y: int

    @property
    def label(self) -> str:
        return f"{self.well}.{self.drop}"


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
