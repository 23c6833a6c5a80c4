"""Mask probability maps to original-size boolean masks, touching only where the mask is.

torchvision pastes each mask into the 1352 x 1688 model input, zero outside its box. Resizing
the whole map to the original image costs (image pixels) per detection -- 5 M for a VMXi
image. A bilinear resize only reads the two nearest source pixels per output pixel, so the
output can be non-zero only in the window whose taps reach the box: this module computes
exactly that window, with the half-pixel-centre mapping of OpenCV's ``INTER_LINEAR`` (edges
replicated), and leaves the rest of the mask False.

Better still, the fast path never pastes at full size: ``paste_regions`` computes, for each
28 x 28 mask, exactly the values torchvision's ``paste_masks_in_image`` would write (same
padding, box expansion and interpolation calls) but only inside its box, and
``resize_region_to_mask`` resizes from that region. Same masks, bit for bit, without a
1352 x 1688 float map (9 MB) per detection.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn.functional import interpolate
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

__all__ = [
    "paste_regions",
    "pasted_region",
    "resize_probability_to_mask",
    "resize_region_to_mask",
]

Region = tuple[np.ndarray, tuple[int, int]]  # values, (top, left) in the pasted map

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


def paste_regions(
    masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int
) -> list[Region]:
    """What ``paste_masks_in_image(masks, boxes, (height, width))`` writes for each mask, as
    (values, (top, left)): the pasted map is ``values`` there and zero everywhere else.

    ``masks`` (N, 1, M, M) probabilities, ``boxes`` (N, 4) xyxy in the pasted map's pixels.
    The arithmetic is torchvision's own (``expand_masks``, ``expand_boxes``, then
    ``paste_mask_in_image``'s resize and clipping), so the values are identical.
    """
    padded, scale = expand_masks(masks, padding=1)
    expanded = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    regions = []
    for mask, (x0, y0, x1, y1) in zip(padded, expanded, strict=True):
        box_w = max(int(x1 - x0 + 1), 1)
        box_h = max(int(y1 - y0 + 1), 1)
        resized = interpolate(
            mask[0].expand((1, 1, -1, -1)),
            size=(box_h, box_w),
            mode="bilinear",
            align_corners=False,
        )[0][0]
        left, right = max(x0, 0), min(x1 + 1, width)
        top, bottom = max(y0, 0), min(y1 + 1, height)
        if right <= left or bottom <= top:
            regions.append((np.zeros((0, 0), np.float32), (0, 0)))
            continue
        values = resized[top - y0 : bottom - y0, left - x0 : right - x0]
        regions.append((values.contiguous().numpy(), (top, left)))
    return regions


def resize_region_to_mask(
    values: np.ndarray,
    origin: tuple[int, int],
    source_height: int,
    source_width: int,
    output_height: int,
    output_width: int,
    threshold: float,
) -> tuple[np.ndarray, tuple[int, int]]:
    """(crop, (y0, x0)): the thresholded ``output``-size mask of a (source_height,
    source_width) probability map that is ``values`` at ``origin`` (top, left) and zero
    elsewhere, resized as OpenCV's ``INTER_LINEAR``. The full mask is ``crop`` placed at
    (y0, x0) in an (output_height, output_width) array of False.
    """
    top, left = origin
    height, width = values.shape
    empty = np.zeros((0, 0), dtype=bool), (0, 0)
    if height == 0 or width == 0:
        return empty
    scale_x = source_width / output_width
    scale_y = source_height / output_height
    x0, x1 = _window(left, left + width - 1, source_width, scale_x, output_width)
    y0, y1 = _window(top, top + height - 1, source_height, scale_y, output_height)
    if x1 <= x0 or y1 <= y0:
        return empty
    col_a, col_b, col_wa, col_wb = _taps(x0, x1, scale_x, source_width)
    row_a, row_b, row_wa, row_wb = _taps(y0, y1, scale_y, source_height)
    # The source pixels every tap reads, zero outside ``values``: taps are monotonic.
    r0, c0 = min(int(row_a[0]), top), min(int(col_a[0]), left)
    r1 = max(int(row_b[-1]), top + height - 1)
    c1 = max(int(col_b[-1]), left + width - 1)
    source = np.zeros((r1 - r0 + 1, c1 - c0 + 1), np.float32)
    source[top - r0 : top - r0 + height, left - c0 : left - c0 + width] = values
    col_a, col_b, row_a, row_b = col_a - c0, col_b - c0, row_a - r0, row_b - r0
    # Horizontal pass on the rows the vertical pass needs, then the vertical pass: float32.
    upper = source[row_a]
    lower = source[row_b]
    upper = upper[:, col_a] * col_wa + upper[:, col_b] * col_wb
    lower = lower[:, col_a] * col_wa + lower[:, col_b] * col_wb
    result = upper * row_wa[:, None] + lower * row_wb[:, None]
    return result > np.float32(threshold), (y0, x0)


def pasted_region(probability: np.ndarray, box: np.ndarray) -> Region:
    """(values, (top, left)): the part of a whole pasted map that can be non-zero.

    ``probability`` is (H, W) float32 in model-input pixels, zero outside ``box`` (x0, y0,
    x1, y1, same pixels) expanded as torchvision pastes it; only that part is returned (a view).
    """
    source_height, source_width = probability.shape
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w = (box[2] - box[0]) / 2 * _PASTE_EXPANSION + 1
    half_h = (box[3] - box[1]) / 2 * _PASTE_EXPANSION + 1
    left = max(0, math.floor(centre_x - half_w) - _MARGIN_PX)
    right = min(source_width, math.ceil(centre_x + half_w) + _MARGIN_PX + 1)
    top = max(0, math.floor(centre_y - half_h) - _MARGIN_PX)
    bottom = min(source_height, math.ceil(centre_y + half_h) + _MARGIN_PX + 1)
    return probability[top:bottom, left:right], (top, left)


def resize_probability_to_mask(
    probability: np.ndarray,
    box: np.ndarray,
    output_height: int,
    output_width: int,
    threshold: float,
) -> tuple[np.ndarray, tuple[int, int]]:
    """(crop, (y0, x0)): the thresholded original-size mask of a whole pasted map.

    ``probability`` is (H, W) float32 in model-input pixels, zero outside ``box`` (x0, y0,
    x1, y1, same pixels) expanded as torchvision pastes it: only that part is read.
    """
    source_height, source_width = probability.shape
    values, origin = pasted_region(probability, box)
    return resize_region_to_mask(
        values, origin, source_height, source_width, output_height, output_width, threshold
    )
