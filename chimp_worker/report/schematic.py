"""Geometry of the plate schematic, shared by the HTML (SVG) and the PNG renderers so both
draw the same picture: wells as boxes in plate order, drops as smaller boxes inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from chimp_worker.plate_layout import DropPosition, PlateLayout

Rect = tuple[float, float, float, float]  # x, y, width, height in schematic pixels


@dataclass(frozen=True)
class WellBox:
    well_index: int
    name: str
    rect: Rect
    drops: tuple[DropBox, ...]


@dataclass(frozen=True)
class DropBox:
    position: DropPosition
    rect: Rect


@dataclass(frozen=True)
class Schematic:
    """Where every well and drop is drawn, plus the axis labels' anchor points."""

    width: float
    height: float
    wells: tuple[WellBox, ...]
    column_labels: tuple[tuple[str, float, float], ...]  # text, centre x, baseline y
    row_labels: tuple[tuple[str, float, float], ...]

    def drop_boxes(self) -> list[DropBox]:
        return [drop for well in self.wells for drop in well.drops]


def layout_schematic(
    layout: PlateLayout,
    *,
    cell: float = 24.0,
    inner_pad: float = 3.0,
    well_gap: float = 6.0,
    margin_left: float = 26.0,
    margin_top: float = 24.0,
    margin: float = 8.0,
) -> Schematic:
    """Compute the schematic's boxes for a plate layout (sizes in output pixels).

    A well is a box of ``drops_x`` x ``drops_y`` cells; the reservoir cell of a SWISSCI-style
    plate is left empty, as SynchWeb does.
    """
    well_width = layout.drops_x * cell + 2 * inner_pad
    well_height = layout.drops_y * cell + 2 * inner_pad
    wells: list[WellBox] = []
    for well_index in range(layout.wells):
        row, column = divmod(well_index, layout.wells_per_row)
        x = margin_left + column * (well_width + well_gap)
        y = margin_top + row * (well_height + well_gap)
        drops: list[DropBox] = []
        for cell_y in range(layout.drops_y):
            for cell_x in range(layout.drops_x):
                location = layout.location_of(well_index, cell_x, cell_y)
                if location is None:
                    continue
                rect = (
                    x + inner_pad + cell_x * cell + 1,
                    y + inner_pad + cell_y * cell + 1,
                    cell - 2,
                    cell - 2,
                )
                drops.append(DropBox(layout.locate(location), rect))
        wells.append(
            WellBox(
                well_index,
                layout.well_name(well_index),
                (x, y, well_width, well_height),
                tuple(drops),
            )
        )
    width = margin_left + layout.wells_per_row * (well_width + well_gap) - well_gap + margin
    height = margin_top + layout.rows * (well_height + well_gap) - well_gap + margin
    column_labels = tuple(
        (
            str(column + 1),
            margin_left + column * (well_width + well_gap) + well_width / 2,
            margin_top - 8,
        )
        for column in range(layout.wells_per_row)
    )
    row_labels = tuple(
        (
            layout.well_name(row * layout.wells_per_row).rstrip("0123456789"),
            margin_left / 2,
            margin_top + row * (well_height + well_gap) + well_height / 2 + 4,
        )
        for row in range(layout.rows)
    )
    return Schematic(width, height, tuple(wells), column_labels, row_labels)
