"""The published rule on hand-made masks at a small "model input" frame, answers by hand.

Frames are deliberately not square and the two scale factors differ (x 2.0, y 1.5 unless
said otherwise), so a swapped x and y lands on another pixel. Where it matters, the same
object is also put through the original-resolution rule to show that the two rules give
different pixels: swapping the rules fails these tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from chimp_worker.analysis import DispenseStatus, MaskCrop
from chimp_worker.geometry import (
    dispense_point,
    mask_centroid,
    published_centroid,
    published_dispense_point,
)

FRAME = (8, 10)  # (height, width) of the model input in these tests
ORIGINAL_HEIGHT, ORIGINAL_WIDTH = 12, 20  # y scale 1.5, x scale 2.0


def crop(x0: int, x1: int, y0: int, y1: int, frame: tuple[int, int] = FRAME) -> MaskCrop:
    """A rectangle given by inclusive x then y ranges, as a crop of ``frame``."""
    mask = np.zeros(frame, dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return MaskCrop.from_full(mask)


def brute_force_published(free: np.ndarray) -> tuple[int, int, float]:
    """(row, col, distance) of the first farthest free pixel from any non-free pixel of the
    frame, pixels beyond the frame not counting (scipy's convention); every pair, no scipy."""
    blocked = np.argwhere(~free).astype(float)
    best = (0, 0, 0.0)
    for row, col in np.argwhere(free):  # row-major order: a later equal value never wins
        distance = math.sqrt(float(((blocked - (row, col)) ** 2).sum(axis=1).min()))
        if distance > best[2]:
            best = (int(row), int(col), distance)
    return best


# --- crystal targets --------------------------------------------------------------------------


def test_a_model_centre_at_a_half_rounds_to_even_before_scaling() -> None:
    # Rows 2-3 and columns 3-6: centre of mass (row 2.5, col 4.5) -> rint -> (2, 4)
    # -> y 2 * 1.5 = 3, x 4 * 2.0 = 8.
    assert published_centroid(crop(3, 6, 2, 3), ORIGINAL_HEIGHT, ORIGINAL_WIDTH) == (8, 3)
    # Rounding once, halves up, after scaling would give (4.5 * 2 = 9, 2.5 * 1.5 = 3.75 -> 4).
    assert published_centroid(crop(3, 6, 2, 3), ORIGINAL_HEIGHT, ORIGINAL_WIDTH) != (9, 4)


def test_the_scaled_centre_is_rounded_half_to_even_again() -> None:
    # One pixel at row 3, col 1: y 3 * 1.5 = 4.5 -> 4 (even), x 1 * 2.0 = 2.
    assert published_centroid(crop(1, 1, 3, 3), ORIGINAL_HEIGHT, ORIGINAL_WIDTH) == (2, 4)
    # Row 5 -> 7.5 -> 8 (even, this time upwards).
    assert published_centroid(crop(1, 1, 5, 5), ORIGINAL_HEIGHT, ORIGINAL_WIDTH) == (2, 8)


def test_x_and_y_are_kept_apart() -> None:
    # Row 1, columns 6-8 (centre col 7): x 14, y 1.5 -> 2. Swapped it would be (2, 14).
    assert published_centroid(crop(6, 8, 1, 1), ORIGINAL_HEIGHT, ORIGINAL_WIDTH) == (14, 2)


def test_a_vmxi_frame_moves_odd_model_rows_half_a_pixel_to_even() -> None:
    # VMXi: 2532 x 2028 from 1688 x 1352, 1.5 both ways. Rows 10-12 (centre 11) -> 16.5 -> 16;
    # columns 101-103 (centre 102) -> 153. The mask resized to the original first covers
    # rows 15-18 (centre 16.5, rounded up: 17) and columns 152-154 (153).
    frame = (1352, 1688)
    published = published_centroid(crop(101, 103, 10, 12, frame), 2028, 2532)
    assert published == (153, 16)
    resized = np.zeros((2028, 2532), dtype=bool)
    resized[15:19, 152:155] = True
    assert mask_centroid(resized) == (153, 17)


def test_an_empty_mask_has_no_target() -> None:
    empty = MaskCrop(np.zeros((0, 0), dtype=bool), 0, 0, FRAME)
    assert published_centroid(empty, ORIGINAL_HEIGHT, ORIGINAL_WIDTH) is None


def test_a_crop_gives_the_centre_of_its_whole_frame_mask() -> None:
    mask = np.zeros(FRAME, dtype=bool)
    mask[2:5, 3:9] = [[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
    cropped = MaskCrop.from_full(mask)
    assert (cropped.top, cropped.left, cropped.values.shape) == (2, 3, (3, 6))
    assert np.array_equal(cropped.full(), mask)
    # Whole frame by hand: rows 2*4 + 3*6 + 4*2 = 34 / 12 = 2.83 -> 3 -> 4.5 -> 4;
    # cols (3+5+6+8) + (3+...+8) + (5+6) = 22 + 33 + 11 = 66 / 12 = 5.5 -> 6 -> 12.
    assert published_centroid(cropped, ORIGINAL_HEIGHT, ORIGINAL_WIDTH) == (12, 4)


@pytest.mark.parametrize("seed", range(5))
def test_the_centre_is_scipys_centre_of_mass_of_the_whole_frame(seed: int) -> None:
    """What the published tool computes, literally: ndimage.center_of_mass on the full
    1352 x 1688 mask, numpy rint, times the scale, rint (VMXi and XChem sizes)."""
    rng = np.random.default_rng(seed)
    frame = (1352, 1688)
    mask = np.zeros(frame, dtype=bool)
    top, left = int(rng.integers(0, 1300)), int(rng.integers(0, 1600))
    mask[top : top + 40, left : left + 60] = rng.random((40, 60)) < 0.6
    row, col = ndimage.center_of_mass(mask)
    for height, width in ((2028, 2532), (1024, 1224)):
        expected = (
            int(np.rint(np.rint(col) * (width / 1688))),
            int(np.rint(np.rint(row) * (height / 1352))),
        )
        assert published_centroid(MaskCrop.from_full(mask), height, width) == expected


def test_a_crop_that_leaves_its_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        MaskCrop(np.ones((3, 3), dtype=bool), 6, 0, FRAME)


# --- dispense point ---------------------------------------------------------------------------


def test_a_flat_distance_plateau_gives_its_first_pixel_in_row_major_order() -> None:
    # Model frame 6 x 10, original 6 x 20 (x 2.0, y 1.0). Drop rows 1-3, columns 1-8; a crystal
    # outside the drop so the distance maximum is used. Row 2 is 2 from rows 0 and 4 and at
    # least 2 from columns 0 and 9 for columns 2-7: a plateau of 2.0 whose first pixel is
    # (row 2, col 2) -> x 4, y 2.
    frame = (6, 10)
    drop, crystal = crop(1, 8, 1, 3, frame), crop(0, 0, 5, 5, frame)
    point = published_dispense_point([drop], [0.9], [crystal], 6, 20)
    assert point.status is DispenseStatus.OK
    assert (point.x, point.y) == (4, 2)
    assert point.clearance_px == pytest.approx(2.0)  # 2 model pixels x the smaller scale, 1.0

    # The original rule on the same drop at the original size (columns 2-17, the frame an
    # edge): 2 from rows 0 and 4, columns 3-16 at least 2 from columns 1 and 18 -> (3, 2).
    drop_original = np.zeros((6, 20), dtype=bool)
    drop_original[1:4, 2:18] = True
    crystal_original = np.zeros((6, 20), dtype=bool)
    crystal_original[5, 0:2] = True
    original = dispense_point([drop_original], [0.9], [crystal_original])
    assert (original.x, original.y) == (3, 2)


def test_a_drop_without_crystals_uses_its_centre_rounded_half_to_even() -> None:
    # Model frame 6 x 10, original 6 x 20. Drop rows 1-4, columns 1-6: centre (2.5, 3.5) ->
    # (2, 4) -> x 8, y 2; 2 pixels from row 0 -> clearance 2.0.
    frame = (6, 10)
    point = published_dispense_point([crop(1, 6, 1, 4, frame)], [0.8], [], 6, 20)
    assert (point.status, point.x, point.y) == (DispenseStatus.OK, 8, 2)
    assert point.clearance_px == pytest.approx(2.0)
    # The original rule on columns 2-13: centre (7.5, 2.5) rounded up -> (8, 3).
    drop_original = np.zeros((6, 20), dtype=bool)
    drop_original[1:5, 2:14] = True
    assert mask_centroid(drop_original) == (8, 3)


def test_the_image_frame_is_not_an_edge_as_in_the_published_tool() -> None:
    # A drop filling the top-left corner of the frame: rows 0-4, columns 0-6; a crystal at
    # row 7 keeps it on the distance path. The farthest pixel from the drop's own edges
    # (row 5, column 7) is (row 0, col 0): 5 from row 5 and 7 from column 7 -> 5.0.
    drop, crystal = crop(0, 6, 0, 4), crop(9, 9, 7, 7)
    point = published_dispense_point([drop], [0.9], [crystal], ORIGINAL_HEIGHT, ORIGINAL_WIDTH)
    assert (point.x, point.y) == (0, 0)
    assert point.clearance_px == pytest.approx(5.0 * 1.5)
    # The original rule keeps clear of the frame instead.
    original = dispense_point([drop.full()], [0.9], [crystal.full()])
    assert (original.x, original.y) != (0, 0)


def test_crystals_are_removed_from_the_drop() -> None:
    # Drop rows 1-6, columns 1-8; a crystal over columns 0-4 leaves rows 1-6 x columns 5-8.
    # Distances to row 0, row 7, column 4 (the crystal) and column 9: min(row, 7 - row,
    # col - 4, 9 - col) = 2.0 on rows 2-5 x columns 6-7, a plateau whose first pixel in
    # row-major order is (row 2, col 6) -> x 6 * 2.0 = 12, y 2 * 1.5 = 3.
    drop, crystal = crop(1, 8, 1, 6), crop(0, 4, 0, 7)
    point = published_dispense_point([drop], [0.9], [crystal], ORIGINAL_HEIGHT, ORIGINAL_WIDTH)
    free = drop.full() & ~crystal.full()
    assert brute_force_published(free) == (2, 6, 2.0)
    assert (point.x, point.y) == (12, 3)
    assert point.clearance_px == pytest.approx(2.0 * 1.5)


@pytest.mark.parametrize("seed", range(6))
def test_the_windowed_transform_gives_the_whole_frame_answer(seed: int) -> None:
    """Random blobs, some touching the frame: the drop's window and the brute force agree."""
    rng = np.random.default_rng(seed)
    frame = (14, 19)
    yy, xx = np.mgrid[0 : frame[0], 0 : frame[1]]
    centre_y, centre_x = rng.uniform(0, frame[0]), rng.uniform(0, frame[1])
    drop = (xx - centre_x) ** 2 / rng.uniform(9, 60) + (yy - centre_y) ** 2 / rng.uniform(
        9, 40
    ) <= 1
    crystals = []
    for _ in range(2):
        cy, cx = rng.integers(0, frame[0]), rng.integers(0, frame[1])
        crystal = np.zeros(frame, dtype=bool)
        crystal[cy : cy + 3, cx : cx + 2] = True
        crystals.append(crystal)
    assert drop.any()  # the centre's nearest pixel is always inside
    point = published_dispense_point(
        [MaskCrop.from_full(drop)],
        [0.9],
        [MaskCrop.from_full(c) for c in crystals],
        frame[0] * 2,
        frame[1] * 2,
    )
    free = drop & ~crystals[0] & ~crystals[1]
    row, col, distance = brute_force_published(free)
    if distance == 0:
        assert point.status is DispenseStatus.NO_SAFE_POINT
        return
    assert point.status is DispenseStatus.OK
    assert (point.x, point.y) == (col * 2, row * 2)
    assert point.clearance_px == pytest.approx(distance * 2)


@pytest.mark.parametrize("seed", range(3))
def test_the_point_is_the_published_tools_on_the_whole_model_frame(seed: int) -> None:
    """Literally the published steps at the real size: the full 1352 x 1688 drop minus the
    crystals, scipy's exact EDT of the whole frame, numpy argmax, rint, scale, rint."""
    rng = np.random.default_rng(seed)
    frame = (1352, 1688)
    yy, xx = np.ogrid[0 : frame[0], 0 : frame[1]]
    cy, cx = rng.uniform(300, 1050), rng.uniform(300, 1400)
    drop = (yy - cy) ** 2 / rng.uniform(200, 400) ** 2 + (xx - cx) ** 2 / rng.uniform(
        200, 400
    ) ** 2 <= 1
    crystals = []
    for _ in range(3):
        crystal = np.zeros(frame, dtype=bool)
        y0, x0 = int(cy + rng.uniform(-150, 150)), int(cx + rng.uniform(-150, 150))
        crystal[y0 : y0 + 50, x0 : x0 + 30] = True
        crystals.append(crystal)
    free = drop & ~np.logical_or.reduce(crystals)
    distances = ndimage.distance_transform_edt(free)
    row, col = np.unravel_index(np.argmax(distances), frame)
    expected = (int(np.rint(col * (1224 / 1688))), int(np.rint(row * (1024 / 1352))))
    point = published_dispense_point(
        [MaskCrop.from_full(drop)], [0.9], [MaskCrop.from_full(c) for c in crystals], 1024, 1224
    )
    assert (point.x, point.y) == expected
    assert point.clearance_px == pytest.approx(distances[row, col] * (1224 / 1688))


def test_the_highest_scoring_drop_is_used_and_every_drop_counted() -> None:
    left, right = crop(0, 2, 1, 5), crop(5, 9, 1, 5)
    point = published_dispense_point([left, right], [0.7, 0.9], [], 8, 10)
    # Right drop rows 1-5, columns 5-9: centre (3, 7), scale 1 -> (7, 3).
    assert (point.x, point.y, point.drops_seen) == (7, 3, 2)


def test_crystals_over_the_whole_drop_leave_no_safe_point() -> None:
    point = published_dispense_point(
        [crop(2, 5, 2, 4)], [0.9], [crop(1, 6, 1, 5)], ORIGINAL_HEIGHT, ORIGINAL_WIDTH
    )
    assert point.status is DispenseStatus.NO_SAFE_POINT
    assert (point.x, point.y, point.clearance_px, point.drops_seen) == (None, None, 0.0, 1)


def test_no_drop_and_empty_drops_are_no_drop() -> None:
    empty = MaskCrop(np.zeros((0, 0), dtype=bool), 0, 0, FRAME)
    for drops, scores in (([], []), ([empty], [0.9])):
        point = published_dispense_point(drops, scores, [crop(1, 2, 1, 2)], 12, 20)
        assert (point.status, point.drops_seen) == (DispenseStatus.NO_DROP, 0)


def test_the_margin_is_held_against_the_clearance_in_original_pixels() -> None:
    drop, crystal = crop(1, 8, 1, 6), crop(0, 4, 0, 7)  # best: 2 model px = 3.0 original px
    ok = published_dispense_point([drop], [0.9], [crystal], 12, 20, margin_px=3.0)
    assert (ok.status, ok.x, ok.y) == (DispenseStatus.OK, 12, 3)
    refused = published_dispense_point([drop], [0.9], [crystal], 12, 20, margin_px=3.5)
    assert refused.status is DispenseStatus.NO_SAFE_POINT
    assert refused.clearance_px == pytest.approx(3.0)


def test_a_crescent_drop_without_crystals_gets_the_distance_maximum() -> None:
    # A 5 x 5 and a 7 x 7 square: centre of mass row 3, col (25 * 3 + 49 * 16) / 74 = 11.6 ->
    # 12, in the gap between them.
    frame = (8, 20)
    drop = MaskCrop.from_full(crop(1, 5, 1, 5, frame).full() | crop(13, 19, 0, 6, frame).full())
    point = published_dispense_point([drop], [0.9], [], 8, 20)
    # The larger square, rows 0-6 x columns 13-19, touches the top and right of the frame,
    # which are no edge: min(7 - row, col - 12) is largest, 7.0, only at its corner (row 0,
    # col 19); the scale is 1.
    assert not drop.full()[3, 12]
    assert brute_force_published(drop.full()) == (0, 19, 7.0)
    assert (point.x, point.y) == (19, 0)
    assert point.clearance_px == pytest.approx(7.0)


def test_masks_of_different_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="one frame"):
        published_dispense_point([crop(1, 2, 1, 2)], [0.9], [crop(1, 2, 1, 2, (9, 10))], 12, 20)


def test_a_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin_px"):
        published_dispense_point([crop(1, 2, 1, 2)], [0.9], [], 12, 20, margin_px=-0.5)
