"""Downscaled JPEG data URIs, so the HTML report carries its pictures and needs no files."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def thumbnail_data_uri(pixels: np.ndarray, *, max_side: int = 384, quality: int = 75) -> str:
    """Encode an RGB (H, W, 3) or greyscale (H, W) uint8 array as a ``data:image/jpeg`` URI.

    The longest side is reduced to ``max_side`` (never enlarged). The drop view's SVG keeps the
    original image's coordinate system, so the smaller picture is stretched back over it and
    the marks stay in original pixels.
    """
    if max_side < 16:
        raise ValueError("thumbnail max_side must be at least 16 pixels")
    if not 1 <= quality <= 95:
        raise ValueError("thumbnail quality must be between 1 and 95")
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, 3) image, got {array.dtype} {array.shape}"
        )
    image = Image.fromarray(array if array.ndim == 2 else array[:, :, :3])
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
