"""Crystal targets and the compound-dispense point, from detector masks, by either rule.

Pure functions on numpy arrays (scipy for the distance transform): no torch, no I/O, so they are
cheap to test with hand-made masks. Results are (x, y) pixels of the original image from the
top-left corner, x to the right and y down (ISPyB / SynchWeb); numpy indexes (row, col) =
(y, x), and the conversion happens here, once.

Two rules (``analysis.TargetRule``):

- **published** (the default; ``published_centroid``, ``published_dispense_point``): the CHiMP
  tools' own arithmetic on the masks at the detector's input size (1352 x 1688, passed as
  ``MaskCrop``). Centre of mass (row, col) there, rounded to the nearest pixel with halves to
  even (numpy ``rint``), multiplied by (original height / 1352, original width / 1688) and
  rounded again the same way. Dispense point: the drop mask minus every crystal mask, exact
  Euclidean distance transform, its first maximum in row-major order (numpy ``argmax``), scaled
  and rounded the same way; with no crystal, the drop's centre of mass.
- **original** (``mask_centroid``, ``dispense_point``): on masks resized to the original image,
  centre of mass rounded once with halves up; the image frame counts as a drop edge.

Both keep the worker's fixes to the published tools: no drop and no safe point are reported
(the tools returned nothing and (0, 0)), so are the drops seen, and a clearance margin can be
required.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from chimp_worker.analysis import DispensePoint, DispenseStatus, MaskCrop

__all__ = [
    "dispense_point",
    "mask_centroid",
    "microns_from_centre",
    "published_centroid",
    "published_dispense_point",
]


def _round_half_up(value: float) -> int:
    """Round to the nearest pixel, halves upwards (Python's round() would go to even)."""
    return math.floor(value + 0.5)


def _as_bool_mask(mask: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (height, width) mask, got shape {array.shape}")
    return array.astype(bool, copy=False)


def mask_centroid(mask: np.ndarray) -> tuple[int, int] | None:
    """Centre of mass of a mask as rounded (x, y) pixels; None when the mask is empty.

    The paper targets a crystal at its mask's centre of mass (section 3.2.3). For a concave
    crystal that point may lie outside the crystal; that is the published behaviour and kept.
    """
    binary = _as_bool_mask(mask, "mask")
    if not binary.any():
        return None
    row, col = ndimage.center_of_mass(binary)
    return _round_half_up(col), _round_half_up(row)


def _best_drop(drop_areas: Sequence[int], drop_scores: Sequence[float]) -> tuple[int, int] | None:
    """(index of the highest-scoring non-empty drop, how many non-empty drops); None: none.

    On a tie the earlier detection wins (the detector sorts by score).
    """
    if len(drop_areas) != len(drop_scores):
        raise ValueError(
            f"{len(drop_areas)} drop masks but {len(drop_scores)} drop scores: one score per mask"
        )
    candidates = [
        (float(score), index)
        for index, (score, area) in enumerate(zip(drop_scores, drop_areas, strict=True))
        if area > 0
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda item: (-item[0], item[1]))[1], len(candidates)


def _check_margin(margin_px: float) -> None:
    if margin_px < 0 or not math.isfinite(margin_px):
        raise ValueError(f"margin_px must be a finite number >= 0, got {margin_px}")


def dispense_point(
    drop_masks: Sequence[np.ndarray],
    drop_scores: Sequence[float],
    crystal_masks: Sequence[np.ndarray],
    margin_px: float = 0.0,
) -> DispensePoint:
    """The original-resolution rule: where to dispense compound into the best drop, away from
    its edge and every crystal, on whole-image masks of the original image.

    Paper section 3.2.5: take the highest-scoring drop, remove the union of all crystal masks,
    run an exact Euclidean distance transform and take the pixel farthest from any pixel
    outside that region. With no crystal the drop's centre of mass is used, as the published
    tooling does, provided it lies inside the drop with at least ``margin_px`` clearance (a
    crescent drop's centre of mass can fall outside it; then the distance-transform maximum
    is used instead).

    Fixes to the reference: crystals covering the whole drop give ``NO_SAFE_POINT`` (the
    reference returned (0, 0)); no drop gives ``NO_DROP``; ``drops_seen`` says how many
    non-empty drops there were. The image border counts as an edge: a drop cut off by the
    frame continues where the camera cannot see, so the point keeps clear of the frame too.

    ``clearance_px`` is the distance from the point to the nearest pixel that is outside the
    drop, inside a crystal or outside the image. A point is safe when that is > 0 (inside the
    free region) and >= ``margin_px``.
    """
    _check_margin(margin_px)
    drops = [_as_bool_mask(mask, "drop mask") for mask in drop_masks]
    crystals = [_as_bool_mask(mask, "crystal mask") for mask in crystal_masks]
    shapes = {mask.shape for mask in (*drops, *crystals)}
    if len(shapes) > 1:
        raise ValueError(f"all masks must have the same (height, width); got {sorted(shapes)}")

    best = _best_drop([int(drop.any()) for drop in drops], drop_scores)
    if best is None:
        return DispensePoint(status=DispenseStatus.NO_DROP, drops_seen=0)
    best_index, drops_seen = best
    free = drops[best_index].copy()
    for crystal in crystals:
        free &= ~crystal

    clearance = _clearance(free)
    if not crystals:
        centre = mask_centroid(drops[best_index])
        assert centre is not None  # the drop is non-empty
        x, y = centre
        centre_clearance = float(clearance[y, x])
        if centre_clearance > 0 and centre_clearance >= margin_px:
            return DispensePoint(
                status=DispenseStatus.OK,
                x=x,
                y=y,
                clearance_px=centre_clearance,
                drops_seen=drops_seen,
            )

    # argmax takes the first maximum in row-major order: smallest y, then smallest x.
    flat_index = int(np.argmax(clearance))
    row, col = np.unravel_index(flat_index, clearance.shape)
    best_clearance = float(clearance[row, col])
    if best_clearance <= 0 or best_clearance < margin_px:
        return DispensePoint(
            status=DispenseStatus.NO_SAFE_POINT,
            clearance_px=best_clearance,
            drops_seen=drops_seen,
        )
    return DispensePoint(
        status=DispenseStatus.OK,
        x=int(col),
        y=int(row),
        clearance_px=best_clearance,
        drops_seen=drops_seen,
    )


def _clearance(free: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each free pixel to the nearest non-free or off-image pixel."""
    padded = np.pad(free, 1, mode="constant", constant_values=False)
    distances = ndimage.distance_transform_edt(padded)
    return np.asarray(distances)[1:-1, 1:-1]


# --- the published rule: at the detector's input size ------------------------------------------


def _to_original(
    row: float, col: float, frame: tuple[int, int], original_height: int, original_width: int
) -> tuple[int, int]:
    """Model-input (row, col) to original (x, y): rounded half to even, scaled, rounded again."""
    scale_y = original_height / frame[0]
    scale_x = original_width / frame[1]
    return int(np.rint(np.rint(col) * scale_x)), int(np.rint(np.rint(row) * scale_y))


def _centre_of_mass(mask: MaskCrop) -> tuple[float, float] | None:
    """(row, col) of the whole-frame mask, as ``ndimage.center_of_mass`` gives it on the full
    frame: the sums of whole pixel indices are exact integers, divided once."""
    height, width = mask.values.shape
    row_counts = np.count_nonzero(mask.values, axis=1)
    count = int(row_counts.sum())
    if count == 0:
        return None
    col_counts = np.count_nonzero(mask.values, axis=0)
    row_sum = int(row_counts @ np.arange(height, dtype=np.int64)) + mask.top * count
    col_sum = int(col_counts @ np.arange(width, dtype=np.int64)) + mask.left * count
    return row_sum / count, col_sum / count


def published_centroid(
    mask: MaskCrop, original_height: int, original_width: int
) -> tuple[int, int] | None:
    """A crystal target by the published rule: (x, y) in original pixels, None when empty.

    ``mask`` is the crystal's thresholded mask at the detector's input size (its ``frame``).
    The centre of mass (row, col) there is rounded half to even, multiplied by
    (original_height / frame height, original_width / frame width) and rounded half to even
    again: e.g. a VMXi row 11.5 -> 12 -> 18.0 -> 18, and 12.5 -> 12 -> 18 as well.
    """
    centre = _centre_of_mass(mask)
    if centre is None:
        return None
    return _to_original(*centre, mask.frame, original_height, original_width)


def _same_frame(masks: Sequence[MaskCrop]) -> tuple[int, int] | None:
    frames = {mask.frame for mask in masks}
    if len(frames) > 1:
        raise ValueError(f"all masks must share one frame (height, width); got {sorted(frames)}")
    return next(iter(frames), None)


def published_dispense_point(
    drop_masks: Sequence[MaskCrop],
    drop_scores: Sequence[float],
    crystal_masks: Sequence[MaskCrop],
    original_height: int,
    original_width: int,
    margin_px: float = 0.0,
) -> DispensePoint:
    """The published rule's dispense point, in original (x, y) pixels.

    Masks are at the detector's input size. The highest-scoring drop minus every crystal;
    the exact Euclidean distance transform of that (scipy's, as the published tool: the
    image frame is not an edge); its first maximum in row-major order, rounded and scaled as
    ``published_centroid``. With no crystal, the drop's centre of mass instead.

    The worker's fixes stay: ``NO_DROP``, ``NO_SAFE_POINT`` (the published tool answered
    (0, 0)), ``drops_seen``, ``margin_px``, and a crystal-free drop whose centre of mass is
    not inside it (a crescent) gets the distance maximum. ``clearance_px`` is in original
    pixels: the distance at the chosen model pixel times the smaller of the two scale factors
    (a lower bound where the scaling differs between x and y), and ``margin_px`` is held
    against it.

    Only the drop's bounding box plus a one-pixel rim is transformed: everything outside the
    drop is background, so that window holds the nearest background pixel of every drop pixel
    and gives the whole-frame answer, bit for bit, in the same row-major order.
    """
    _check_margin(margin_px)
    frame = _same_frame([*drop_masks, *crystal_masks])
    best = _best_drop([mask.area for mask in drop_masks], drop_scores)
    if best is None or frame is None:
        return DispensePoint(status=DispenseStatus.NO_DROP, drops_seen=0)
    best_index, drops_seen = best
    drop = drop_masks[best_index]
    scale = min(original_height / frame[0], original_width / frame[1])

    height, width = drop.values.shape
    top, left = max(0, drop.top - 1), max(0, drop.left - 1)
    bottom = min(frame[0], drop.top + height + 1)
    right = min(frame[1], drop.left + width + 1)
    free = np.zeros((bottom - top, right - left), dtype=bool)
    free[drop.top - top : drop.top - top + height, drop.left - left : drop.left - left + width] = (
        drop.values
    )
    for crystal in crystal_masks:
        _clear(free, top, left, crystal)
    distances = np.asarray(ndimage.distance_transform_edt(free))

    if not crystal_masks:
        centre = _centre_of_mass(drop)
        assert centre is not None  # the drop is non-empty
        row, col = int(np.rint(centre[0])), int(np.rint(centre[1]))
        inside = top <= row < bottom and left <= col < right
        centre_clearance = float(distances[row - top, col - left]) * scale if inside else 0.0
        if centre_clearance > 0 and centre_clearance >= margin_px:
            x, y = _to_original(row, col, frame, original_height, original_width)
            return DispensePoint(
                status=DispenseStatus.OK,
                x=x,
                y=y,
                clearance_px=centre_clearance,
                drops_seen=drops_seen,
            )

    best_row, best_col = divmod(int(np.argmax(distances)), distances.shape[1])
    best_clearance = float(distances[best_row, best_col]) * scale
    if best_clearance <= 0 or best_clearance < margin_px:
        return DispensePoint(
            status=DispenseStatus.NO_SAFE_POINT,
            clearance_px=best_clearance,
            drops_seen=drops_seen,
        )
    x, y = _to_original(best_row + top, best_col + left, frame, original_height, original_width)
    return DispensePoint(
        status=DispenseStatus.OK, x=x, y=y, clearance_px=best_clearance, drops_seen=drops_seen
    )


def _clear(free: np.ndarray, top: int, left: int, crystal: MaskCrop) -> None:
    """Remove ``crystal`` from ``free``, a window at (top, left) of the crystal's frame."""
    height, width = crystal.values.shape
    r0, c0 = max(crystal.top, top), max(crystal.left, left)
    r1 = min(crystal.top + height, top + free.shape[0])
    c1 = min(crystal.left + width, left + free.shape[1])
    if r0 < r1 and c0 < c1:
        free[r0 - top : r1 - top, c0 - left : c1 - left] &= ~crystal.values[
            r0 - crystal.top : r1 - crystal.top, c0 - crystal.left : c1 - crystal.left
        ]


def microns_from_centre(
    x: float,
    y: float,
    width: int,
    height: int,
    mpp_x: float | None,
    mpp_y: float | None,
) -> tuple[float, float] | None:
    """Offset of pixel (x, y) from the image centre in microns: (+x right, +y down).

    The centre is pixel (W // 2, H // 2), as the published tools measure it (for an even size
    that is the pixel right of and below the middle). ``None`` when the image has no
    micronsPerPixel calibration.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if mpp_x is None or mpp_y is None:
        return None
    if not (mpp_x > 0 and mpp_y > 0 and math.isfinite(mpp_x) and math.isfinite(mpp_y)):
        raise ValueError(f"microns per pixel must be positive and finite, got {mpp_x}, {mpp_y}")
    return (x - width // 2) * mpp_x, (y - height // 2) * mpp_y
