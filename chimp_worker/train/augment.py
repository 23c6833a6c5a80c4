"""The paper's training augmentations, on uint8 RGB arrays (numpy + OpenCV).

Classifier (section 3.1.4): random flips and rotations, optical distortion, brightness and
contrast, blurring and CLAHE. Detectors (section 3.2.3): random flips and rotations, blurring,
sharpening, brightness and contrast -- applied to the image and its instance masks together.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a run is
reproducible from its seed whatever the number of data-loader workers. Geometric transforms
that move pixels keep the image size (rotations by non-right angles fill with black, which is
what the padded classifier input looks like anyway); masks follow with nearest-neighbour
sampling, and boxes are recomputed from the masks by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _flip_and_turn(
    arrays: list[np.ndarray], rng: np.random.Generator, flips: bool, quarter_turns: bool
) -> list[np.ndarray]:
    """The same random flips and 90-degree turns for an image and its masks."""
    if flips and rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if flips and rng.random() < 0.5:
        arrays = [a[::-1, :] for a in arrays]
    if quarter_turns:
        turns = int(rng.integers(0, 4))
        if turns:
            arrays = [np.rot90(a, turns) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def _rotation_matrix(shape: tuple[int, ...], degrees: float) -> np.ndarray:
    height, width = shape[:2]
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)


def _rotate(image: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float
) -> np.ndarray:
    """pixel' = (pixel - mean) * c + mean * b, with b, c drawn from 1 +/- the limits."""
    b = 1.0 + float(rng.uniform(-brightness, brightness))
    c = 1.0 + float(rng.uniform(-contrast, contrast))
    values = image.astype(np.float32)
    mean = float(values.mean())
    return np.clip((values - mean) * c + mean * b + 0.5, 0, 255).astype(np.uint8)


def gaussian_blur(
    image: np.ndarray, rng: np.random.Generator, sigma: tuple[float, float]
) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), float(rng.uniform(*sigma)))


def sharpen(image: np.ndarray, rng: np.random.Generator, amount: tuple[float, float]) -> np.ndarray:
    """Unsharp mask: image + a * (image - blurred)."""
    a = float(rng.uniform(*amount))
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return cv2.addWeighted(image, 1.0 + a, blurred, -a, 0)


def clahe(image: np.ndarray, rng: np.random.Generator, clip: tuple[float, float]) -> np.ndarray:
    """CLAHE on the L channel of LAB, 12 x 12 tiles as the authors prepared their images."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    equaliser = cv2.createCLAHE(clipLimit=float(rng.uniform(*clip)), tileGridSize=(12, 12))
    lab[:, :, 0] = equaliser.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def optical_distortion(image: np.ndarray, rng: np.random.Generator, limit: float) -> np.ndarray:
    """Barrel or pincushion distortion about the centre (albumentations' OpticalDistortion)."""
    height, width = image.shape[:2]
    k = float(rng.uniform(-limit, limit))
    ys, xs = np.indices((height, width), dtype=np.float32)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    norm = max(cx, cy, 1.0)
    dx, dy = (xs - cx) / norm, (ys - cy) / norm
    factor = 1.0 + k * (dx * dx + dy * dy)
    map_x = (dx * factor * norm + cx).astype(np.float32)
    map_y = (dy * factor * norm + cy).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


@dataclass(frozen=True)
class ClassifierAugment:
    """Random augmentation of one RGB uint8 image for classifier training."""

    flips: bool = True
    quarter_turns: bool = True
    max_rotation_deg: float = 15.0
    rotation_p: float = 0.3
    distortion_p: float = 0.2
    distortion_limit: float = 0.08
    brightness: float = 0.2
    contrast: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    clahe_p: float = 0.3
    clahe_clip: tuple[float, float] = (1.0, 4.0)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        (image,) = _flip_and_turn([image], rng, self.flips, self.quarter_turns)
        if rng.random() < self.rotation_p:
            degrees = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
            image = _rotate(image, _rotation_matrix(image.shape, degrees))
        if rng.random() < self.distortion_p:
            image = optical_distortion(image, rng, self.distortion_limit)
        image = brightness_contrast(image, rng, self.brightness, self.contrast)
        if rng.random() < self.blur_p:
            image = gaussian_blur(image, rng, self.blur_sigma)
        if rng.random() < self.clahe_p:
            image = clahe(image, rng, self.clahe_clip)
        return image


@dataclass(frozen=True)
class DetectorAugment:
    """Random augmentation of an RGB uint8 image and its (N, H, W) bool instance masks."""

    flips: bool = True
    quarter_turns: bool = False  # only for square inputs; the detector input is 1688 x 1352
    max_rotation_deg: float = 10.0
    rotation_p: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    sharpen_p: float = 0.2
    sharpen_amount: tuple[float, float] = (0.2, 1.0)

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        layers = [image, *list(masks)]
        layers = _flip_and_turn(layers, rng, self.flips, self.quarter_turns)
        image, mask_list = layers[0], layers[1:]
        if rng.random() < self.rotation_p:
            degrees = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
            matrix = _rotation_matrix(image.shape, degrees)
            image = _rotate(image, matrix)
            mask_list = [
                _rotate(m.astype(np.uint8), matrix, nearest=True).astype(bool) for m in mask_list
            ]
        image = brightness_contrast(image, rng, self.brightness, self.contrast)
        if rng.random() < self.blur_p:
            image = gaussian_blur(image, rng, self.blur_sigma)
        elif rng.random() < self.sharpen_p:
            image = sharpen(image, rng, self.sharpen_amount)
        height, width = image.shape[:2]
        stacked = np.stack(mask_list) if mask_list else np.zeros((0, height, width), dtype=bool)
        return image, stacked
