"""Geometry on hand-made masks whose answers are worked out by hand (or by brute force).

The original-resolution rule; the published rule is in test_geometry_published.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chimp_worker.analysis import DispenseStatus
from chimp_worker.geometry import dispense_point, mask_centroid, microns_from_centre

# Deliberately not square, so that an x/y swap lands somewhere else (or off the image).
HEIGHT, WIDTH = 20, 50


def blank() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH), dtype=bool)


def rectangle(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Inclusive pixel ranges, written as x then y to keep the tests readable."""
    mask = blank()
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def brute_force_clearance(free: np.ndarray) -> np.ndarray:
    """Distance from each free pixel to the nearest non-free pixel, the frame counting as one.

    An independent check of the distance transform: every pair, no scipy.
    """
    padded = np.pad(free, 1)
    blocked = np.argwhere(~padded).astype(float)
    result = np.zeros(free.shape)
    for row, col in np.argwhere(free):
        deltas = blocked - (row + 1, col + 1)
        result[row, col] = math.sqrt(float((deltas**2).sum(axis=1).min()))
    return result


# --- mask_centroid ---------------------------------------------------------------------------


def test_centroid_of_a_wide_rectangle_is_given_as_x_then_y() -> None:
    assert mask_centroid(rectangle(10, 20, 2, 4)) == (15, 3)


def test_centroid_of_an_empty_mask_is_none() -> None:
    assert mask_centroid(blank()) is None


def test_centroid_of_a_concave_crystal_may_lie_outside_it() -> None:
    # An L: a 2-wide upright bar (x 5-6, y 2-11) and a 2-high foot (x 7-14, y 10-11).
    crystal = rectangle(5, 6, 2, 11) | rectangle(7, 14, 10, 11)
    # x: (20 px * 5.5 + 16 px * 10.5) / 36 = 7.72; y: (20 * 6.5 + 16 * 10.5) / 36 = 8.28
    assert mask_centroid(crystal) == (8, 8)
    assert not crystal[8, 8]


def test_centroid_rounds_halves_up() -> None:
    # x 10-11 -> 10.5, y 3-4 -> 3.5: both round up, never to even.
    assert mask_centroid(rectangle(10, 11, 3, 4)) == (11, 4)


def test_centroid_rejects_a_mask_that_is_not_two_dimensional() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_centroid(np.ones((2, 3, 3), dtype=bool))


# --- dispense_point --------------------------------------------------------------------------


def test_a_crystal_pushes_the_point_into_the_free_part_of_the_drop() -> None:
    drop = rectangle(5, 37, 3, 15)
    crystal = rectangle(5, 24, 0, 19)  # covers the left of the drop
    # Free region x 25-37, y 3-15: a 13 x 13 square whose single farthest pixel is its centre.
    point = dispense_point([drop], [0.9], [crystal])
    assert point.status is DispenseStatus.OK
    assert (point.x, point.y) == (31, 9)
    assert point.clearance_px == pytest.approx(7.0)
    assert point.drops_seen == 1


def test_the_point_is_the_brute_force_farthest_pixel_around_a_concave_crystal() -> None:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    drop = (xx - 24) ** 2 / 22**2 + (yy - 10) ** 2 / 9**2 <= 1  # an ellipse filling the image
    crystal = rectangle(20, 22, 4, 16) | rectangle(23, 34, 14, 16)  # an L inside the drop
    point = dispense_point([drop], [0.8], [crystal])

    expected = brute_force_clearance(drop & ~crystal)
    assert point.status is DispenseStatus.OK
    assert point.clearance_px == pytest.approx(expected.max())
    assert expected[point.y, point.x] == pytest.approx(expected.max())
    assert not crystal[point.y, point.x]
    assert drop[point.y, point.x]
    assert point.x < 20  # the larger free part is left of the L's upright


def test_without_crystals_the_point_is_the_drop_centre_of_mass() -> None:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    drop = (xx - 30) ** 2 + (yy - 10) ** 2 <= 64  # a disc of radius 8 at x=30, y=10
    point = dispense_point([drop], [0.7], [])
    assert (point.x, point.y) == (30, 10)
    # Nearest pixels outside the disc: (34, 3), (31, 2)... at sqrt(16 + 49) = sqrt(65)
    assert point.clearance_px == pytest.approx(math.sqrt(65))
    assert point.status is DispenseStatus.OK


def test_the_image_frame_counts_as_the_drop_edge() -> None:
    whole_image = np.ones((11, 11), dtype=bool)
    point = dispense_point([whole_image], [0.9], [])
    assert (point.x, point.y) == (5, 5)
    assert point.clearance_px == pytest.approx(6.0)


def test_a_drop_whose_centre_of_mass_is_outside_it_uses_the_farthest_pixel() -> None:
    # A 9 x 9 and a 13 x 13 square: the centre of mass, (27, 9), falls in the gap between them.
    drop = rectangle(4, 12, 5, 13) | rectangle(30, 42, 3, 15)
    centre = mask_centroid(drop)
    assert centre is not None
    assert not drop[centre[1], centre[0]]
    point = dispense_point([drop], [0.9], [])
    assert (point.x, point.y) == (36, 9)
    assert point.clearance_px == pytest.approx(7.0)


def test_the_highest_scoring_of_two_drops_is_used_and_both_are_counted() -> None:
    left = rectangle(2, 14, 3, 15)  # centre (8, 9)
    right = rectangle(30, 42, 3, 15)  # centre (36, 9)
    point = dispense_point([left, right], [0.65, 0.95], [])
    assert (point.x, point.y) == (36, 9)
    assert point.drops_seen == 2
    reversed_scores = dispense_point([left, right], [0.95, 0.65], [])
    assert (reversed_scores.x, reversed_scores.y) == (8, 9)


def test_two_drops_with_equal_scores_use_the_first() -> None:
    left = rectangle(2, 14, 3, 15)
    right = rectangle(30, 42, 3, 15)
    point = dispense_point([left, right], [0.8, 0.8], [])
    assert (point.x, point.y) == (8, 9)


def test_crystals_covering_the_whole_drop_leave_no_safe_point() -> None:
    drop = rectangle(10, 20, 5, 12)
    crystals = [rectangle(8, 15, 3, 14), rectangle(16, 22, 3, 14)]
    point = dispense_point([drop], [0.9], crystals)
    assert point.status is DispenseStatus.NO_SAFE_POINT
    assert point.x is None
    assert point.y is None
    assert point.clearance_px == 0.0
    assert point.drops_seen == 1


def test_no_drop_detected() -> None:
    point = dispense_point([], [], [rectangle(10, 20, 5, 12)])
    assert point.status is DispenseStatus.NO_DROP
    assert (point.x, point.y, point.drops_seen) == (None, None, 0)


def test_an_empty_drop_mask_is_no_drop() -> None:
    point = dispense_point([blank()], [0.99], [])
    assert point.status is DispenseStatus.NO_DROP
    assert point.drops_seen == 0


def test_a_margin_the_free_region_can_meet_is_accepted() -> None:
    drop = rectangle(5, 37, 3, 15)
    crystal = rectangle(5, 24, 0, 19)  # leaves a 13 x 13 square: best clearance 7
    point = dispense_point([drop], [0.9], [crystal], margin_px=7.0)
    assert point.status is DispenseStatus.OK
    assert (point.x, point.y) == (31, 9)


def test_a_margin_larger_than_any_clearance_leaves_no_safe_point() -> None:
    drop = rectangle(5, 37, 3, 15)
    crystal = rectangle(5, 24, 0, 19)
    point = dispense_point([drop], [0.9], [crystal], margin_px=7.5)
    assert point.status is DispenseStatus.NO_SAFE_POINT
    assert point.clearance_px == pytest.approx(7.0)


def test_a_margin_moves_a_drop_without_crystals_off_its_centre_of_mass() -> None:
    # A right triangle: its centre of mass has less clearance than its incentre.
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    drop = (xx >= 2) & (yy <= 18) & (yy - 1 >= (xx - 2) * 17 / 40)
    free_clearance = brute_force_clearance(drop)
    centre = mask_centroid(drop)
    assert centre is not None
    at_centre = free_clearance[centre[1], centre[0]]
    best = free_clearance.max()
    assert at_centre < best

    plain = dispense_point([drop], [0.9], [])
    assert (plain.x, plain.y) == centre

    margin = (at_centre + best) / 2
    moved = dispense_point([drop], [0.9], [], margin_px=margin)
    assert moved.status is DispenseStatus.OK
    assert moved.clearance_px == pytest.approx(best)
    assert (moved.x, moved.y) != centre


@pytest.mark.parametrize(
    ("drops", "scores", "crystals", "message"),
    [
        ([np.ones((4, 5), bool)], [0.9, 0.8], [], "one score per mask"),
        ([np.ones((4, 5), bool)], [0.9], [np.ones((5, 4), bool)], "same"),
    ],
)
def test_inconsistent_inputs_are_refused(
    drops: list[np.ndarray], scores: list[float], crystals: list[np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dispense_point(drops, scores, crystals)


def test_a_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin_px"):
        dispense_point([rectangle(1, 5, 1, 5)], [0.9], [], margin_px=-1)


# --- microns_from_centre ---------------------------------------------------------------------


def test_microns_from_centre_uses_each_axis_calibration() -> None:
    assert microns_from_centre(50, 25, 101, 51, 2.0, 3.0) == (0.0, 0.0)
    assert microns_from_centre(0, 0, 101, 51, 2.0, 3.0) == (-100.0, -75.0)
    assert microns_from_centre(100, 30, 101, 51, 2.0, 3.0) == (100.0, 15.0)


def test_microns_from_centre_of_an_even_sized_image_start_at_pixel_w_over_2() -> None:
    # The published tools take the centre as (W // 2, H // 2): pixel (2, 1) of a 4 x 2 image.
    assert microns_from_centre(2, 1, 4, 2, 1.0, 1.0) == (0.0, 0.0)
    assert microns_from_centre(0, 0, 4, 2, 1.5, 2.0) == (-3.0, -2.0)
    # A VMXi frame: 2532 x 2028 -> centre (1266, 1014), not (1265.5, 1013.5).
    assert microns_from_centre(1266, 1014, 2532, 2028, 1.6, 1.6) == (0.0, 0.0)


def test_microns_from_centre_without_calibration_is_none() -> None:
    assert microns_from_centre(5, 5, 10, 10, None, 2.0) is None


def test_microns_from_centre_rejects_a_zero_calibration() -> None:
    with pytest.raises(ValueError, match="positive"):
        microns_from_centre(5, 5, 10, 10, 0.0, 2.0)
