"""Render a ``PlateReport`` as one self-contained HTML page: inline CSS, inline script, images
as data URIs, the schematic and overlays as inline SVG. No external asset, no CDN, so the file
can be mailed, attached to a ticket or opened on a beamline PC without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from chimp_worker import __version__
from chimp_worker.report.colours import (
    FAILED_FILL,
    NO_IMAGE_FILL,
    NO_SCORE_FILL,
    PENDING_FILL,
    drop_fill,
    gradient_stops,
    probability_colour,
)
from chimp_worker.report.model import (
    CRYSTAL_CLASS,
    STATE_DONE,
    STATE_FAILED,
    STATE_NO_IMAGE,
    STATE_PENDING,
    DropPosition,
    DropReport,
    InspectionReport,
    PlateReport,
)
from chimp_worker.report.schematic import Schematic, layout_schematic

# Probability rows in the drop view, crystals first; other schemas' classes follow by name.
_CLASS_ORDER = (CRYSTAL_CLASS, "clear", "precipitant", "other")


@dataclass(frozen=True)
class _Cell:
    """What the schematic shows for one location in one inspection."""

    drop: DropReport | None
    state: str
    fill: str
    title: str
    p_crystal: float | None

    @property
    def css_state(self) -> str:
        return self.state.replace(" ", "-")


@dataclass(frozen=True)
class _DropView:
    """A drop plus the drawing sizes its overlay needs (marks scale with the image)."""

    report: DropReport
    position: DropPosition
    width: int | None
    height: int | None

    @property
    def _scale(self) -> float:
        return float(max(self.width or 0, self.height or 0, 100))

    @property
    def radius(self) -> float:
        return round(self._scale * 0.012, 1)

    @property
    def stroke(self) -> float:
        return round(max(1.0, self._scale * 0.0025), 1)

    @property
    def font(self) -> float:
        return round(self._scale * 0.04, 1)

    @property
    def has_subsample_ids(self) -> bool:
        return any(target.blSubSampleId is not None for target in self.report.targets)

    @property
    def probabilities(self) -> list[tuple[str, float]]:
        known = [
            (n, self.report.probabilities[n])
            for n in _CLASS_ORDER
            if n in self.report.probabilities
        ]
        others = sorted(
            (n, v) for n, v in self.report.probabilities.items() if n not in _CLASS_ORDER
        )
        return known + others

    @staticmethod
    def bar_colour(name: str, value: float) -> str:
        return probability_colour(value) if name == CRYSTAL_CLASS else "#8a8a8a"


@dataclass(frozen=True)
class _InspectionView:
    inspection: InspectionReport
    cells: dict[int, _Cell]
    drops: list[_DropView]
    summary: str


def _cell(drop: DropReport | None, position: DropPosition) -> _Cell:
    if drop is None:
        return _Cell(None, "empty", drop_fill(None), f"{position.label}: no sample", None)
    parts = [f"{position.label} (location {drop.location}): {drop.state}"]
    if drop.p_crystal is not None:
        parts.append(f"P(crystal) {drop.p_crystal:.2f}")
    if drop.failure_reason:
        parts.append(drop.failure_reason)
    if drop.targets:
        parts.append(f"{len(drop.targets)} crystal target(s)")
    return _Cell(drop, drop.state, drop_fill(drop), ", ".join(parts), drop.p_crystal)


def _summary(inspection: InspectionReport) -> str:
    counts = {state: 0 for state in (STATE_DONE, STATE_FAILED, STATE_PENDING, STATE_NO_IMAGE)}
    for drop in inspection.drops:
        counts[drop.state] = counts.get(drop.state, 0) + 1
    targets = sum(len(drop.targets) for drop in inspection.drops)
    likely = sum(1 for drop in inspection.drops if (drop.p_crystal or 0.0) >= 0.5)
    text = (
        f"{len(inspection.drops)} drops: {counts[STATE_DONE]} done, {counts[STATE_FAILED]} "
        f"failed, {counts[STATE_PENDING]} pending; {likely} with P(crystal) ≥ 0.5; "
        f"{targets} crystal targets"
    )
    if inspection.state and inspection.state != "Completed":
        text += f"; imager state {inspection.state}"
    return text


def _inspection_view(
    plate: PlateReport, inspection: InspectionReport, schematic: Schematic
) -> _InspectionView:
    by_location: dict[int, DropReport] = {}
    for drop in inspection.drops:
        if drop.location in by_location:
            raise ValueError(
                f"inspection {inspection.containerInspectionId} has two drops at location "
                f"{drop.location}"
            )
        by_location[drop.location] = drop
    cells = {
        box.position.location: _cell(by_location.get(box.position.location), box.position)
        for box in schematic.drop_boxes()
    }
    drops = []
    for drop in sorted(inspection.drops, key=lambda d: d.location):
        try:
            position = plate.layout.locate(drop.location)
        except ValueError as exc:
            raise ValueError(
                f"inspection {inspection.containerInspectionId}: {exc} "
                f"(plate {plate.barcode}, {plate.container_type or 'unknown type'})"
            ) from None
        drops.append(_DropView(drop, position, drop.image_width, drop.image_height))
    return _InspectionView(inspection, cells, drops, _summary(inspection))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("chimp_worker", "report"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _asset(name: str) -> str:
    return resources.files("chimp_worker.report").joinpath(name).read_text(encoding="utf-8")


def render_html(plate: PlateReport) -> str:
    """The whole page as a string. Raises ValueError for a drop the plate layout cannot place."""
    schematic = layout_schematic(plate.layout)
    inspections = [_inspection_view(plate, i, schematic) for i in plate.inspections]
    template = _environment().get_template("plate.html")
    return template.render(
        plate=plate,
        schematic=schematic,
        inspections=inspections,
        gradient=gradient_stops(),
        fills={
            "failed": FAILED_FILL,
            "pending": PENDING_FILL,
            "no_score": NO_SCORE_FILL,
            "no_image": NO_IMAGE_FILL,
        },
        css=jinja2.utils.markupsafe.Markup(_asset("report.css")),
        js=jinja2.utils.markupsafe.Markup(_asset("report.js")),
        version=__version__,
    )


def write_html(plate: PlateReport, path: Path) -> Path:
    """Render and write atomically (a half-written report is never left behind)."""
    text = render_html(plate)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path
