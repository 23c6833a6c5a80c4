"""Pictures of an analysis drawn over the micrograph, in the style of the paper's Figs 4-6.

Masks are filled with a translucent colour per instance (seeded, so the same result draws the
same picture); boxes are dark blue for the XChem detector's objects and red for the VMXi
detector's crystals, labelled with class and score in red; crystal targets are crosses; the
dispense point is a red dot with a white rim; the classifier's probabilities go in a banner.
OpenCV drawing only; pixels in and out are RGB uint8.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from chimp_worker.analysis import DispenseStatus, ImageAnalysis
from chimp_worker.detector_kinds import kind_of_role

__all__ = ["render_overlay", "write_overlay"]

RED = (220, 30, 30)
DARK_BLUE = (20, 40, 160)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
TARGET_YELLOW = (255, 220, 0)
MASK_ALPHA = 0.45


def _scale(width: int, height: int) -> int:
    """Line thickness that stays visible on 300-pixel thumbnails and 2532-pixel originals."""
    return max(1, round(min(width, height) / 400))


def _mask_colours(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 256, size=(count, 3)).astype(np.float32)


def render_overlay(pixels: np.ndarray, analysis: ImageAnalysis, *, seed: int = 0) -> np.ndarray:
    """A new RGB uint8 image: ``pixels`` (H, W, 3) with ``analysis`` drawn on it."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[:2] != (analysis.height, analysis.width):
        raise ValueError(
            f"image is {pixels.shape[1]} x {pixels.shape[0]} but the analysis is for "
            f"{analysis.width} x {analysis.height}"
        )
    canvas = pixels.astype(np.float32)
    colours = _mask_colours(len(analysis.detections), seed)
    for detection, colour in zip(analysis.detections, colours, strict=True):
        mask = detection.mask
        if mask is not None and mask.values.any():
            height, width = mask.values.shape
            region = canvas[mask.top : mask.top + height, mask.left : mask.left + width]
            region[mask.values] = (1 - MASK_ALPHA) * region[mask.values] + MASK_ALPHA * colour
    image = np.ascontiguousarray(canvas.clip(0, 255).astype(np.uint8))

    thickness = _scale(analysis.width, analysis.height)
    font_scale = 0.4 * thickness
    for detection in analysis.detections:
        x0, y0, x1, y1 = (round(value) for value in detection.box)
        box_colour = _box_colour(detection.model_role)
        cv2.rectangle(image, (x0, y0), (x1, y1), box_colour, thickness)
        _text(
            image,
            f"{detection.label} {detection.score:.2f}",
            (x0, max(y0 - 3, 10)),
            font_scale,
            RED,
        )

    arm = 4 * thickness + 2
    for target in analysis.crystal_targets:
        cv2.drawMarker(
            image, (target.x, target.y), BLACK, cv2.MARKER_CROSS, 2 * arm + 2, thickness + 2
        )
        cv2.drawMarker(
            image, (target.x, target.y), TARGET_YELLOW, cv2.MARKER_CROSS, 2 * arm, thickness
        )

    dispense = analysis.dispense
    if dispense is not None and dispense.x is not None and dispense.y is not None:
        radius = 3 * thickness + 2
        cv2.circle(image, (dispense.x, dispense.y), radius + thickness, WHITE, -1, cv2.LINE_AA)
        cv2.circle(image, (dispense.x, dispense.y), radius, RED, -1, cv2.LINE_AA)

    _banner(image, analysis, font_scale, thickness)
    return image


def _box_colour(role: str | None) -> tuple[int, int, int]:
    """Red for a crystals-only detector (VMXi), dark blue for one that also finds drops
    (XChem) and for anything else (the baseline)."""
    kind = kind_of_role(role) if role is not None else None
    return RED if kind is not None and not kind.supplies_drops else DARK_BLUE


def _text(
    image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour: tuple[int, ...]
) -> None:
    """Text with a dark outline so it reads on bright and dark backgrounds alike."""
    weight = max(1, round(scale * 2))
    cv2.putText(
        image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, BLACK, weight + 2, cv2.LINE_AA
    )
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, weight, cv2.LINE_AA)


def _banner(image: np.ndarray, analysis: ImageAnalysis, scale: float, thickness: int) -> None:
    parts = []
    if analysis.probabilities:
        ranked = sorted(analysis.probabilities.items(), key=lambda item: -item[1])
        parts.append("  ".join(f"{name} {value:.2f}" for name, value in ranked))
    if analysis.dispense is not None:
        dispense = analysis.dispense
        where = f" ({dispense.x}, {dispense.y})" if dispense.status is DispenseStatus.OK else ""
        parts.append(f"dispense: {dispense.status.value}{where}")
    if analysis.crystal_targets:
        parts.append(f"{len(analysis.crystal_targets)} crystal targets")
    if not parts:
        return
    line_height = round(22 * scale) + 4
    for index, line in enumerate(parts):
        _text(image, line, (4 * thickness, line_height * (index + 1)), scale * 1.2, WHITE)


def write_overlay(
    path: Path, pixels: np.ndarray, analysis: ImageAnalysis, *, seed: int = 0
) -> Path:
    """Draw the overlay and write it as PNG (OpenCV writes BGR, hence the conversion)."""
    image = render_overlay(pixels, analysis, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write overlay PNG {path}")
    return path
