"""Crystal targets and the compound-dispense point, from detector masks.

Pure functions on numpy arrays (scipy for the distance transform): no torch, no I/O, so they are
cheap to test with hand-made masks. Masks are boolean arrays of shape (height, width) of the
original image. Results are (x, y) pixels from the top-left corner, x to the right and y down
(ISPyB / SynchWeb); numpy indexes (row, col) = (y, x), and the conversion happens here, once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from chimp_worker.analysis import DispensePoint, DispenseStatus

__all__ = ["dispense_point", "mask_centroid", "microns_from_centre"]


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


def dispense_point(
    drop_masks: Sequence[np.ndarray],
    drop_scores: Sequence[float],
    crystal_masks: Sequence[np.ndarray],
    margin_px: float = 0.0,
) -> DispensePoint:
    """Where to dispense compound into the best drop, away from its edge and every crystal.

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
    if len(drop_masks) != len(drop_scores):
        raise ValueError(
            f"{len(drop_masks)} drop masks but {len(drop_scores)} drop scores: one score per mask"
        )
    if margin_px < 0 or not math.isfinite(margin_px):
        raise ValueError(f"margin_px must be a finite number >= 0, got {margin_px}")
    drops = [_as_bool_mask(mask, "drop mask") for mask in drop_masks]
    crystals = [_as_bool_mask(mask, "crystal mask") for mask in crystal_masks]
    shapes = {mask.shape for mask in (*drops, *crystals)}
    if len(shapes) > 1:
        raise ValueError(f"all masks must have the same (height, width); got {sorted(shapes)}")

    candidates = [(float(score), index) for index, score in enumerate(drop_scores)]
    candidates = [(score, index) for score, index in candidates if drops[index].any()]
    if not candidates:
        return DispensePoint(status=DispenseStatus.NO_DROP, drops_seen=0)
    drops_seen = len(candidates)
    # Highest score wins; on a tie the earlier detection (the detector sorts by score).
    best_index = min(candidates, key=lambda item: (-item[0], item[1]))[1]
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


def microns_from_centre(
    x: float,
    y: float,
    width: int,
    height: int,
    mpp_x: float | None,
    mpp_y: float | None,
) -> tuple[float, float] | None:
    """Offset of pixel (x, y) from the image centre in microns: (+x right, +y down).

    The centre of a W-pixel-wide image lies at (W - 1) / 2 in pixel-index coordinates (pixel i
    is centred on i). ``None`` when the image has no micronsPerPixel calibration.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if mpp_x is None or mpp_y is None:
        return None
    if not (mpp_x > 0 and mpp_y > 0 and math.isfinite(mpp_x) and math.isfinite(mpp_y)):
        raise ValueError(f"microns per pixel must be positive and finite, got {mpp_x}, {mpp_y}")
    return (x - (width - 1) / 2) * mpp_x, (y - (height - 1) / 2) * mpp_y
