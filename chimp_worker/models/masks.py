"""Mask probability maps to original-size boolean masks, touching only where the mask is.

torchvision pastes each mask into the 1352 x 1688 model input, zero outside its box. Resizing
the whole map to the original image costs (image pixels) per detection -- 5 M for a VMXi
image. A bilinear resize only reads the two nearest source pixels per output pixel, so the
output can be non-zero only in the window whose taps reach the box: this module computes
exactly that window, with the half-pixel-centre mapping of OpenCV's ``INTER_LINEAR`` (edges
replicated), and leaves the rest of the mask False.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["resize_probability_to_mask"]

# torchvision pastes a 28 x 28 mask expanded by (28 + 2) / 28 around the box centre.
_PASTE_EXPANSION = 30 / 28
_MARGIN_PX = 3


def _taps(start: int, stop: int, scale: float, source_size: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of output pixels start..stop-1 (OpenCV INTER_LINEAR)."""
    position = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    first = np.floor(position)
    fraction = (position - first).astype(np.float32)
    first = first.astype(np.int64)
    low = first < 0
    high = first >= source_size - 1
    first[low] = 0
    fraction[low] = 0.0
    first[high] = source_size - 1
    fraction[high] = 0.0
    second = np.minimum(first + 1, source_size - 1)
    return first, second, np.float32(1.0) - fraction, fraction


def _window(
    low: float, high: float, source_size: int, scale: float, output_size: int
) -> tuple[int, int]:
    """Output pixel range whose bilinear taps can reach source pixels low..high."""
    source_start = max(0, math.floor(low) - _MARGIN_PX)
    source_stop = min(source_size, math.ceil(high) + _MARGIN_PX + 1)
    start = max(0, math.floor((source_start + 0.5) / scale - 0.5) - 1)
    stop = min(output_size, math.ceil((source_stop + 0.5) / scale - 0.5) + 2)
    return start, max(start, stop)


def resize_probability_to_mask(
    probability: np.ndarray,
    box: np.ndarray,
    output_height: int,
    output_width: int,
    threshold: float,
) -> tuple[np.ndarray, tuple[int, int]]:
    """(crop, (y0, x0)): the thresholded original-size mask inside its window.

    ``probability`` is (H, W) float32 in model-input pixels, zero outside ``box`` (x0, y0,
    x1, y1, same pixels) expanded as torchvision pastes it. The full mask is ``crop`` placed at
    (y0, x0) in an (output_height, output_width) array of False.
    """
    source_height, source_width = probability.shape
    scale_x = source_width / output_width
    scale_y = source_height / output_height
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w = (box[2] - box[0]) / 2 * _PASTE_EXPANSION + 1
    half_h = (box[3] - box[1]) / 2 * _PASTE_EXPANSION + 1
    x0, x1 = _window(centre_x - half_w, centre_x + half_w, source_width, scale_x, output_width)
    y0, y1 = _window(centre_y - half_h, centre_y + half_h, source_height, scale_y, output_height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    col_a, col_b, col_wa, col_wb = _taps(x0, x1, scale_x, source_width)
    row_a, row_b, row_wa, row_wb = _taps(y0, y1, scale_y, source_height)
    # Horizontal pass on the rows the vertical pass needs, then the vertical pass: float32.
    top = probability[row_a]
    bottom = probability[row_b]
    top = top[:, col_a] * col_wa + top[:, col_b] * col_wb
    bottom = bottom[:, col_a] * col_wa + bottom[:, col_b] * col_wb
    values = top * row_wa[:, None] + bottom * row_wb[:, None]
    return values > np.float32(threshold), (y0, x0)
