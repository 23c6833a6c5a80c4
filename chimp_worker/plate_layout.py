"""Where a BLSample.location sits on a plate: ContainerType geometry, pure and torch-free.

One home for the plate layout, shared by what reads plates back (``ispyb.queries``,
``ispyb.time_course``, ``ispyb.hit_queries``, ``report``) and what creates them
(``mock_imager``), so a drop's location means the same well and drop everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "MOCK_DEFAULT_DROPS_X",
    "SYNCHWEB_DEFAULT_DROPS_X",
    "DropPosition",
    "PlateLayout",
]

# Drops across a well when a ContainerType row has no dropPerWellX: a plate read back is
# drawn as 2 drops (CrystalQuickX, SynchWeb's default); the mock imager creates 1.
SYNCHWEB_DEFAULT_DROPS_X = 2
MOCK_DEFAULT_DROPS_X = 1


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
        default_drops_x: int = SYNCHWEB_DEFAULT_DROPS_X,
    ) -> PlateLayout:
        """Build from ContainerType columns; missing values fall back to a 96-well plate.

        ISPyB's ``capacity`` counts drops (CrystalQuickX: 96 wells x 2 drops = 192). A missing
        ``dropPerWellX`` becomes ``default_drops_x``: 2 where a plate is read back (as SynchWeb
        draws it), 1 where the mock imager creates one.
        """
        drops_x = drop_per_well_x or default_drops_x
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
