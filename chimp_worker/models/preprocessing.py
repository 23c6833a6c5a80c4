"""Image preprocessing for the CHiMP models, exactly as the published method does it.

Pure functions from a uint8 RGB array to a float32 CHW array (numpy + OpenCV, no torch), so
they can run in a prefetching thread while the models work, and so a parity test can hold them
against an independent implementation. Deterministic: the CLAHE clip limit is pinned.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "DETECTOR_INPUT_HEIGHT",
    "DETECTOR_INPUT_WIDTH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "as_rgb",
    "classifier_input",
    "detector_input",
    "longest_side_size",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The detectors were trained on images scaled to 1688 x 1352 (width x height), paper 3.2.1.
DETECTOR_INPUT_HEIGHT = 1352
DETECTOR_INPUT_WIDTH = 1688
CLAHE_TILES = (12, 12)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) RGB view of an image; greyscale (H, W) or (H, W, 1) is replicated."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels (uint8), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise ValueError(f"expected a greyscale or RGB image, got an array of shape {array.shape}")


def longest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the longer side to ``size``, keeping the aspect ratio."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    scale = size / max(height, width)
    # Python's round, as albumentations' LongestMaxSize (the training pipeline) rounds.
    new_height = max(1, round(height * scale))
    new_width = max(1, round(width * scale))
    return min(new_height, size), min(new_width, size)


def classifier_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """Classifier input, float32 (3, size, size).

    Longest side resized to ``size`` (bilinear; small images are enlarged too), centred zero
    padding to a square, then ImageNet mean/std on 0..1 pixels. Padding is zero *before*
    normalisation, as the classifier was trained (padded black borders).
    """
    rgb = as_rgb(pixels)
    height, width = rgb.shape[:2]
    new_height, new_width = longest_side_size(height, width, size)
    if (new_height, new_width) != (height, width):
        rgb = cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top = (size - new_height) // 2
    left = (size - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = rgb
    scaled = canvas.astype(np.float32) * np.float32(1.0 / 255.0)
    normalised = (scaled - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def detector_input(pixels: np.ndarray, clip_limit: float = 2.0) -> np.ndarray:
    """Detector input, float32 (3, 1352, 1688) in 0..1.

    Resize without keeping the aspect ratio to 1352 x 1688, CLAHE (12 x 12 tiles, pinned clip
    limit) on the L channel of LAB, back to RGB, then scale the image by its own minimum and
    maximum over all channels. A constant image (max == min) becomes all zeros instead of a
    division by zero. Torchvision's model transform then applies its own normalisation.
    """
    if not clip_limit > 0:
        raise ValueError(f"CLAHE clip limit must be positive, got {clip_limit}")
    rgb = as_rgb(pixels)
    if rgb.shape[:2] != (DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH):
        rgb = cv2.resize(
            rgb, (DETECTOR_INPUT_WIDTH, DETECTOR_INPUT_HEIGHT), interpolation=cv2.INTER_LINEAR
        )
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=CLAHE_TILES)
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    equalised = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    low = int(equalised.min())
    high = int(equalised.max())
    chw = equalised.transpose(2, 0, 1).astype(np.float32)
    if high == low:
        return np.zeros_like(chw)
    chw -= np.float32(low)
    chw /= np.float32(high - low)
    return chw
