"""Preprocessing against an independent, straightforward reading of the published preprocessing.

The reference functions below are written from the contract's words (torch for the arithmetic
and padding, OpenCV for the bilinear resize and CLAHE the contract names), not from the
implementation, and must agree with it to 1e-6.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as tvf

from chimp_worker.models.preprocessing import (
    as_rgb,
    classifier_input,
    detector_input,
    longest_side_size,
)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def reference_classifier_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    rgb = np.dstack([pixels] * 3) if pixels.ndim == 2 else pixels
    height, width = rgb.shape[:2]
    longest = max(height, width)
    new_width, new_height = round(width * size / longest), round(height * size / longest)
    resized = cv2.resize(rgb, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(resized).permute(2, 0, 1).float()
    left, top = (size - new_width) // 2, (size - new_height) // 2
    padded = torch.nn.functional.pad(
        tensor, (left, size - new_width - left, top, size - new_height - top), value=0.0
    )
    return tvf.normalize(padded / 255.0, MEAN, STD)


def reference_detector_input(pixels: np.ndarray, clip_limit: float) -> torch.Tensor:
    rgb = np.dstack([pixels] * 3) if pixels.ndim == 2 else pixels
    resized = cv2.resize(rgb, (1688, 1352), interpolation=cv2.INTER_LINEAR)
    lightness, a_channel, b_channel = cv2.split(cv2.cvtColor(resized, cv2.COLOR_RGB2LAB))
    lightness = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(12, 12)).apply(lightness)
    equalised = cv2.cvtColor(cv2.merge([lightness, a_channel, b_channel]), cv2.COLOR_LAB2RGB)
    tensor = torch.from_numpy(equalised).permute(2, 0, 1).double()
    low, high = tensor.min(), tensor.max()
    return ((tensor - low) / (high - low)).float()


def micrograph(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A smooth random picture (blobs and gradients), so resizing has something to do."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), channels), np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = image.reshape(height, width, channels)
    return image[:, :, 0] if channels == 1 else image


@pytest.mark.parametrize(
    ("height", "width", "channels", "size"),
    [
        (1024, 1224, 3, 512),  # XChem RGB, wider than tall
        (203, 152, 1, 96),  # VMXi-like greyscale, taller than wide
        (30, 45, 3, 128),  # smaller than the input size: enlarged
        (77, 77, 3, 64),  # square
    ],
)
def test_classifier_preprocessing_matches_the_contract(
    height: int, width: int, channels: int, size: int
) -> None:
    pixels = micrograph(height, width, channels, seed=height)
    ours = torch.from_numpy(classifier_input(pixels, size))
    reference = reference_classifier_input(pixels, size)
    assert ours.shape == (3, size, size)
    assert ours.dtype == torch.float32
    assert float((ours - reference).abs().max()) <= 1e-6


def test_classifier_padding_is_centred_and_black_before_normalisation() -> None:
    pixels = np.full((40, 80, 3), 255, np.uint8)  # white, twice as wide as tall
    result = classifier_input(pixels, 64)
    # 64 x 32 of content between 16-row black bands: top rows 0-15, content 16-47.
    black = (np.zeros(3, np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    white = (np.ones(3, np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(result[:, 15, 10], black, atol=1e-6)
    np.testing.assert_allclose(result[:, 16, 10], white, atol=1e-6)
    np.testing.assert_allclose(result[:, 47, 63], white, atol=1e-6)
    np.testing.assert_allclose(result[:, 48, 0], black, atol=1e-6)


def test_longest_side_keeps_the_aspect_ratio() -> None:
    assert longest_side_size(2028, 2532, 512) == (410, 512)
    assert longest_side_size(1024, 1224, 384) == (321, 384)
    assert longest_side_size(10, 5, 100) == (100, 50)


@pytest.mark.parametrize(
    ("height", "width", "channels", "clip"),
    [(1024, 1224, 3, 2.0), (406, 507, 1, 2.0), (1352, 1688, 3, 3.5), (60, 40, 3, 1.0)],
)
def test_detector_preprocessing_matches_the_contract(
    height: int, width: int, channels: int, clip: float
) -> None:
    pixels = micrograph(height, width, channels, seed=width)
    ours = torch.from_numpy(detector_input(pixels, clip))
    reference = reference_detector_input(pixels, clip)
    assert ours.shape == (3, 1352, 1688)
    assert ours.dtype == torch.float32
    assert float(ours.min()) == 0.0
    assert float(ours.max()) == 1.0
    assert float((ours - reference).abs().max()) <= 1e-6


def test_detector_preprocessing_is_deterministic_and_uses_the_clip_limit() -> None:
    pixels = micrograph(200, 250, 3, seed=3)
    first = detector_input(pixels, 2.0)
    assert np.array_equal(first, detector_input(pixels, 2.0))
    assert not np.array_equal(first, detector_input(pixels, 4.0))


def test_a_constant_image_becomes_zeros_not_nan() -> None:
    result = detector_input(np.full((50, 60), 128, np.uint8))
    assert np.isfinite(result).all()
    assert not result.any()


def test_greyscale_is_replicated_to_three_channels() -> None:
    grey = micrograph(90, 120, 1, seed=5)
    rgb = np.dstack([grey] * 3)
    assert np.array_equal(as_rgb(grey), rgb)
    assert np.array_equal(as_rgb(grey[:, :, None]), rgb)
    assert np.array_equal(classifier_input(grey, 64), classifier_input(rgb, 64))
    assert np.array_equal(detector_input(grey), detector_input(rgb))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 10, 3), np.uint16), "8-bit"),
        (np.zeros((10, 10, 4), np.uint8), "greyscale or RGB"),
        (np.zeros((10,), np.uint8), "greyscale or RGB"),
    ],
)
def test_unsupported_pixel_arrays_are_refused(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classifier_input(array, 32)
