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
from chimp_worker.plate_layout import DropPosition
from chimp_worker.report.colours import (
    FAILED_FILL,
    NO_IMAGE_FILL,
    NO_SCORE_FILL,
    PENDING_FILL,
    drop_fill,
    gradient_stops,
    scale_colour,
    text_colour,
)
from chimp_worker.report.model import (
    CRYSTAL_CLASS,
    STATE_DONE,
    STATE_FAILED,
    STATE_NO_IMAGE,
    STATE_PENDING,
    CourseMark,
    DropRank,
    DropReport,
    InspectionReport,
    PlateReport,
)
from chimp_worker.report.schematic import Schematic, layout_schematic

# Probability rows in the drop view, crystals first; other schemas' classes follow by name.
_CLASS_ORDER = (CRYSTAL_CLASS, "clear", "precipitant", "other")


# How many drops the ranked list on the page shows (the JSON of `hits --all` has them all).
RANKED_SHOWN = 24


@dataclass(frozen=True)
class _Cell:
    """What the schematic shows for one location in one inspection."""

    drop: DropReport | None
    state: str
    fill: str
    title: str
    p_crystal: float | None
    hit: str = "no-hit"  # new-hit (first hit here) | hit | no-hit, for the new-hits view

    @property
    def css_state(self) -> str:
        return self.state.replace(" ", "-")

    @property
    def text_fill(self) -> str:
        return text_colour(self.fill)


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

    @property
    def label_font(self) -> float:
        return round(self._scale * 0.03, 1)

    def bar_colour(self, name: str, value: float, scale: str) -> str:
        return scale_colour(value, scale) if name == CRYSTAL_CLASS else "#8a8a8a"


@dataclass(frozen=True)
class _NewHit:
    """A ranked drop; ``at`` is its course mark at the inspection shown (its first hit)."""

    rank: DropRank
    position: DropPosition
    at: CourseMark | None = None

    @property
    def score(self) -> float:
        return self.at.score if self.at is not None else self.rank.score

    @property
    def crystal_count(self) -> int:
        return self.at.crystal_count if self.at is not None else self.rank.crystal_count

    @property
    def crystal_area_um2(self) -> float | None:
        return self.at.crystal_area_um2 if self.at is not None else self.rank.crystal_area_um2


@dataclass(frozen=True)
class _InspectionView:
    inspection: InspectionReport
    cells: dict[int, _Cell]
    drops: list[_DropView]
    summary: str
    new_hits: list[_NewHit]


@dataclass(frozen=True)
class _CourseView:
    """One drop's time course: a strip of its pictures and a chart of P(crystal) and count."""

    position: DropPosition
    marks: list[tuple[CourseMark, int]]  # with each mark's containerInspectionId
    rank: DropRank | None
    width: float = 240.0
    height: float = 70.0

    @property
    def max_count(self) -> int:
        return max([1, *(mark.crystal_count for mark, _ in self.marks)])

    def x(self, index: int) -> float:
        if len(self.marks) < 2:
            return round(self.width / 2, 1)
        return round(20 + index * (self.width - 40) / (len(self.marks) - 1), 1)

    def y(self, p_crystal: float | None) -> float:
        return round(self.height - 12 - (p_crystal or 0.0) * (self.height - 24), 1)

    def bar(self, count: int) -> float:
        return round(count / self.max_count * (self.height - 24), 1)

    @property
    def polyline(self) -> str:
        return " ".join(
            f"{self.x(i)},{self.y(mark.p_crystal)}"
            for i, (mark, _) in enumerate(self.marks)
            if mark.p_crystal is not None
        )


def _cell(
    drop: DropReport | None, position: DropPosition, scale: str, hit: str = "no-hit"
) -> _Cell:
    if drop is None:
        title = f"{position.label}: no sample"
        return _Cell(None, "empty", drop_fill(None), title, None, "no-sample")
    parts = [f"{position.label} (location {drop.location}): {drop.state}"]
    if drop.p_crystal is not None:
        parts.append(f"P(crystal) {drop.p_crystal:.2f}")
    if drop.failure_reason:
        parts.append(drop.failure_reason)
    if drop.targets:
        parts.append(f"{len(drop.targets)} crystal target(s)")
    if hit == "new-hit":
        parts.append("new crystal hit")
    elif hit == "hit":
        parts.append("crystal hit")
    return _Cell(drop, drop.state, drop_fill(drop, scale), ", ".join(parts), drop.p_crystal, hit)


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
    inspection_id = inspection.containerInspectionId
    new = {rank.location for rank in plate.new_hits(inspection_id)}
    hit_here = {
        location
        for location, marks in plate.courses.items()
        if any(m.containerInspectionId == inspection_id and m.hit for m in marks)
    }
    by_location: dict[int, DropReport] = {}
    for drop in inspection.drops:
        if drop.location in by_location:
            raise ValueError(
                f"inspection {inspection.containerInspectionId} has two drops at location "
                f"{drop.location}"
            )
        by_location[drop.location] = drop

    def hit_class(location: int) -> str:
        if location in new:
            return "new-hit"
        return "hit" if location in hit_here else "no-hit"

    cells = {
        box.position.location: _cell(
            by_location.get(box.position.location),
            box.position,
            plate.colour_scale,
            hit_class(box.position.location),
        )
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
    new_hits = [
        _NewHit(
            rank,
            plate.layout.locate(rank.location),
            next(
                (
                    mark
                    for mark in plate.courses.get(rank.location, ())
                    if mark.containerInspectionId == inspection_id
                ),
                None,
            ),
        )
        for rank in plate.new_hits(inspection_id)
        if 1 <= rank.location <= plate.layout.capacity
    ]
    return _InspectionView(inspection, cells, drops, _summary(inspection), new_hits)


def _course_views(plate: PlateReport) -> list[_CourseView]:
    ranks = {rank.location: rank for rank in plate.ranking}
    views = []
    for location, marks in sorted(plate.courses.items()):
        if not 1 <= location <= plate.layout.capacity or not marks:
            continue
        ordered = sorted(marks, key=lambda mark: mark.number)
        views.append(
            _CourseView(
                plate.layout.locate(location),
                [(mark, mark.containerInspectionId) for mark in ordered],
                ranks.get(location),
            )
        )
    return views


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
    ranked = [
        _NewHit(rank, plate.layout.locate(rank.location))
        for rank in plate.ranking[:RANKED_SHOWN]
        if 1 <= rank.location <= plate.layout.capacity
    ]
    latest = plate.inspections[-1].containerInspectionId if plate.inspections else None
    template = _environment().get_template("plate.html")
    return template.render(
        plate=plate,
        schematic=schematic,
        inspections=inspections,
        courses=_course_views(plate),
        ranked=ranked,
        ranked_total=len(plate.ranking),
        latest_inspection=latest,
        gradient=gradient_stops(scale=plate.colour_scale),
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
