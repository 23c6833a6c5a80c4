"""Plate overview for beamline staff: a self-contained HTML page and a PNG schematic.

The input is a plain ``PlateReport`` (see ``model``), so rendering is testable without a
database; ``chimp_worker.report.build`` fills one from ISPyB and the worker's tables.
"""

from chimp_worker.report.colours import drop_fill, probability_colour
from chimp_worker.report.html import render_html, write_html
from chimp_worker.report.model import (
    CourseMark,
    DetectionMark,
    DispenseMark,
    DropRank,
    DropReport,
    InspectionReport,
    PlateLayout,
    PlateReport,
    TargetMark,
)
from chimp_worker.report.png import render_png, write_png
from chimp_worker.report.thumbnails import thumbnail_data_uri

__all__ = [
    "CourseMark",
    "DetectionMark",
    "DispenseMark",
    "DropRank",
    "DropReport",
    "InspectionReport",
    "PlateLayout",
    "PlateReport",
    "TargetMark",
    "drop_fill",
    "probability_colour",
    "render_html",
    "render_png",
    "thumbnail_data_uri",
    "write_html",
    "write_png",
]
