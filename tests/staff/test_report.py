"""The plate overview's pieces without a browser: plate geometry, colours, PNG, thumbnails."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from chimp_worker.report import (
    CourseMark,
    DropRank,
    DropReport,
    InspectionReport,
    PlateLayout,
    PlateReport,
    TargetMark,
    probability_colour,
    render_html,
    render_png,
    thumbnail_data_uri,
)
from chimp_worker.report.colours import (
    FAILED_FILL,
    PENDING_FILL,
    hex_to_rgb,
    scale_colour,
    text_colour,
    viridis_colour,
)
from chimp_worker.report.schematic import layout_schematic


@pytest.mark.parametrize(
    ("location", "well", "drop"),
    [(1, "A1", 1), (2, "A1", 2), (3, "A2", 1), (24, "A12", 2), (25, "B1", 1), (192, "H12", 2)],
)
def test_crystalquickx_locations_follow_synchweb_numbering(location, well, drop):
    position = PlateLayout().locate(location)
    assert (position.well, position.drop) == (well, drop)


def test_a_location_outside_the_plate_is_refused():
    with pytest.raises(ValueError, match="location 193 is outside a plate of 192 drops"):
        PlateLayout().locate(193)


def test_three_drop_plate_skips_the_reservoir_cell_in_both_directions():
    # SWISSCI 3 Drop in SynchWeb: a 2 x 2 grid whose cell 1 (top right) is the reservoir.
    layout = PlateLayout.from_container_type(
        capacity=288, well_per_row=12, drop_per_well_x=2, drop_per_well_y=2, well_drop=1
    )
    assert (layout.wells, layout.drops_per_well, layout.well_drop) == (96, 3, 1)
    cells = [(p.cell_x, p.cell_y) for p in map(layout.locate, (1, 2, 3))]
    assert cells == [(0, 0), (0, 1), (1, 1)]
    assert layout.locate(4).well == "A2"
    assert layout.location_of(0, 1, 0) is None
    for location in range(1, layout.capacity + 1):
        position = layout.locate(location)
        assert layout.location_of(position.well_index, position.cell_x, position.cell_y) == (
            location
        )


def test_container_type_without_reservoir_or_values_falls_back_to_96_by_2():
    assert PlateLayout.from_container_type(
        capacity=None, well_per_row=None, drop_per_well_x=None, drop_per_well_y=None, well_drop=-1
    ) == PlateLayout(12, 8, 2, 1, None)


@pytest.mark.parametrize(
    ("probability", "colour"),
    [(0.0, "#d92626"), (0.25, "#d98026"), (0.5, "#d9d926"), (1.0, "#26d926"), (-3.0, "#d92626")],
)
def test_probability_colour_runs_from_red_through_yellow_to_green(probability, colour):
    assert probability_colour(probability) == colour


def test_probability_colour_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        probability_colour(float("nan"))


def _plate() -> PlateReport:
    drops = (
        DropReport(location=1, state="done", probabilities={"crystal": 1.0, "clear": 0.0}),
        DropReport(location=2, state="done", probabilities={"crystal": 0.0, "clear": 1.0}),
        DropReport(location=3, state="failed", failure_reason="image_corrupt"),
        DropReport(location=4, state="pending"),
        DropReport(
            location=5,
            state="done",
            probabilities={"crystal": 0.5},
            targets=(TargetMark(10, 20), TargetMark(30, 40)),
            image_width=100,
            image_height=80,
            image_uri="data:image/jpeg;base64,AAAA",
        ),
    )
    return PlateReport("P-1", PlateLayout(), (InspectionReport(7, "Completed", drops=drops),))


def _centre_pixel(image: Image.Image, location: int, scale: float) -> tuple[int, int, int]:
    schematic = layout_schematic(PlateLayout())
    box = next(b for b in schematic.drop_boxes() if b.position.location == location)
    x, y, w, _h = box.rect
    title_height = 34  # png._TITLE_HEIGHT
    return image.getpixel((round((x + w / 2 + 5) * scale), round((title_height + y + 4) * scale)))


@pytest.mark.parametrize(
    ("probability", "colour"),
    [(0.0, "#440154"), (0.5, "#21918c"), (0.55, "#229d88"), (1.0, "#fde725"), (7.0, "#fde725")],
)
def test_viridis_runs_from_dark_purple_to_yellow_between_matplotlibs_tenths(probability, colour):
    assert viridis_colour(probability) == colour


def test_scales_are_named_and_numbers_stay_readable_on_every_fill():
    assert scale_colour(0.5, "red-green") == "#d9d926"
    assert scale_colour(0.5, "viridis") == "#21918c"
    with pytest.raises(ValueError, match="unknown colour scale 'rainbow'"):
        scale_colour(0.5, "rainbow")
    assert text_colour("#440154") == "#ffffff"  # dark purple: white digits
    assert text_colour("#fde725") == "#111111"  # yellow: black digits


def test_png_fills_each_drop_with_its_colour():
    image = render_png(_plate(), scale=2.0)
    assert _centre_pixel(image, 1, 2.0) == hex_to_rgb("#fde725")  # viridis by default
    assert _centre_pixel(image, 2, 2.0) == hex_to_rgb("#440154")
    red_green = render_png(replace(_plate(), colour_scale="red-green"), scale=2.0)
    assert _centre_pixel(red_green, 1, 2.0) == hex_to_rgb("#26d926")
    assert _centre_pixel(red_green, 2, 2.0) == hex_to_rgb("#d92626")
    assert _centre_pixel(image, 3, 2.0) == hex_to_rgb(FAILED_FILL)
    assert _centre_pixel(image, 4, 2.0) == hex_to_rgb(PENDING_FILL)
    assert _centre_pixel(image, 6, 2.0) == (255, 255, 255)  # no sample there


def test_html_is_self_contained_and_places_every_drop():
    page = render_html(_plate())
    assert 'http-equiv="Content-Security-Policy"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count('class="well"') == 96
    assert page.count('<rect class="drop ') == 192
    assert 'data-location="1" data-well="A1" data-drop="1"' in page
    assert 'fill="#fde725"' in page
    assert 'fill="#26d926"' not in page
    assert 'fill="#26d926"' in render_html(replace(_plate(), colour_scale="red-green"))
    assert page.count('<g class="target"') == 2


def test_targets_are_numbered_with_their_score_and_the_overlay_has_a_legend():
    plate = _plate()
    inspection = plate.inspections[0]
    drops = tuple(
        replace(
            drop,
            targets=(TargetMark(10, 20, 501, score=0.93), TargetMark(30, 40, 502, score=0.71)),
            full_image_url="file:///dls/imaging/1/7/5.jpg",
        )
        if drop.location == 5
        else drop
        for drop in inspection.drops
    )
    page = render_html(replace(plate, inspections=(replace(inspection, drops=drops),)))
    assert re.findall(r'<text class="target-label"[^>]*>(\d+)</text>', page) == ["1", "2"]
    assert "crystal target 1 (10, 20), detector score 0.93" in page
    assert re.findall(r'<td class="score">([^<]*)</td>', page) == ["0.93", "0.71"]
    assert page.count('<ul class="overlay-legend">') == 1
    for item in ("crystal target, numbered", "crystal detection", "drop detection", "dispense"):
        assert item in page
    assert '<a class="full-image" href="file:///dls/imaging/1/7/5.jpg"' in page


def test_the_time_course_and_the_new_hits_of_each_inspection_are_on_the_page():
    courses = {
        5: (
            CourseMark(6, 1, 0.1, 0, 0.05, False),
            CourseMark(7, 2, 0.5, 2, 0.7, True, 2400.0),
        )
    }
    ranking = (
        DropRank(5, 1, 0.82, True, 0.7, 2, 2400.0, 7, 2),
        DropRank(1, 2, 0.5, True, 1.0, 0, 0.0, 6, 1),
    )
    plate = replace(_plate(), courses=courses, ranking=ranking)
    page = render_html(plate)
    # location 5 became a hit at inspection 7: orange in the new-hits view, listed under it
    assert 'class="drop done new-hit" data-hit="new-hit" data-location="5"' in page
    assert 'class="drop done hit" data-hit="hit"' not in page  # location 1: first hit elsewhere
    assert "New hits at this inspection: 1" in page
    assert (
        '<tr data-location="5"><td>1</td><td><a href="#drop-7-5">A3.1</a></td><td>0.70</td>'
        "<td>2</td><td>2400</td></tr>"
    ) in page
    # its course: a frame per inspection, the picture borrowed from the drop view
    assert page.count('<a class="frame') == 2
    assert 'data-from="drop-7-5"' in page
    assert 'data-from="drop-6-5"' in page
    assert page.count('<circle class="p-point') == 2
    assert 'points="20.0,53.4 220.0,35.0"' in page  # P 0.1 and 0.5: y = 58 - 46 P
    assert "Drops ranked by promise" in page


def test_two_drops_at_one_location_are_refused():
    drops = (DropReport(location=1), DropReport(location=1))
    plate = PlateReport("P-2", PlateLayout(), (InspectionReport(8, drops=drops),))
    with pytest.raises(ValueError, match="two drops at location 1"):
        render_html(plate)


def test_thumbnail_keeps_the_aspect_ratio_and_is_a_jpeg():
    pixels = np.zeros((1024, 1224, 3), np.uint8)
    pixels[:, :612] = 200
    uri = thumbnail_data_uri(pixels, max_side=300)
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert (image.format, image.size) == ("JPEG", (300, 251))
    assert image.getpixel((10, 100))[0] > 180
    assert image.getpixel((290, 100))[0] < 30
