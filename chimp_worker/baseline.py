"""A weight-free analyser from classical image processing (OpenCV, scipy): the fallback.

Used only when chosen (``CHIMP_ANALYSER=baseline``) or when no model files are configured. It
writes under its own auto-score schema (``BASELINE_CV``), never under CHIMP, and its name
("baseline") is on every result, log line and report, so nobody mistakes it for CHiMP.

How it works, on a copy of the image shrunk to 640 pixels on its long side:

1. **Drop.** Thin dark structures (a black-hat transform of a median-smoothed image) are the
   drop's meniscus, the well's ring and the plastic's edges. The smooth bright regions between
   them are the well floor and the plastic; the drop is the smallest compact region that one
   of them encloses (the frame counts as a boundary, so a drop cut by the frame is found too).
   If none is enclosed, the largest compact bright region away from the corners, grown over
   its dark rim, is taken.
2. **Crystals.** The drop's own appearance is modelled as a function of the distance from its
   edge (the meniscus darkens towards it) plus a slow local median; what differs strongly from
   that (or has a strong Canny edge deep inside the drop) and forms a convex, non-round
   blob is a crystal candidate. Round blobs are bubbles or phase-separation droplets; blobs
   in grainy surroundings must be smooth and large, or they are precipitate.
3. **Outcome.** Rule-based evidence (crystal candidates, grain texture, round droplets, long
   fibres) turned into four pseudo-probabilities by a softmax. They rank outcomes; they are
   not calibrated probabilities.

The dispense point comes from ``geometry.dispense_point`` with the drop and crystal masks, as
for CHiMP. Measured against the mock imager's ground truth in docs/demo.md.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from chimp_worker.analysis import (
    BASELINE_SCHEMA,
    CLASS_NAMES,
    AnalysisOptions,
    CrystalTarget,
    DecodedImage,
    Detection,
    DispensePoint,
    DispenseStatus,
    ImageAnalysis,
    MaskCrop,
    ModelRef,
    TargetRule,
)
from chimp_worker.geometry import dispense_point, mask_centroid

ANALYSER_NAME = "baseline"
ALGORITHM = "baseline-cv"
VERSION = "1"
WORK_SIDE = 640  # long side of the working copy, pixels

_MIN_AREA_FRACTION = 0.03  # of the image: smaller bright regions are not the drop
_ROUND_LIMIT = 0.85  # contour area / enclosing circle area above this: bubble or droplet
_SOLIDITY_LIMIT = 0.7  # area / (hull area + half its perimeter) below this: not a crystal
_GRAINY_DROP = 0.45  # grain fraction above which the drop is full of precipitate
_PHASE_SEPARATION_BLOBS = 4  # round blobs from which a drop shows phase separation


@dataclass(frozen=True)
class CrystalCandidate:
    """A crystal found on the working copy (coordinates of the working copy)."""

    mask: np.ndarray  # bool, working-copy size
    score: float
    contrast: float
    solidity: float
    roundness: float
    roughness: float  # median grain of the blob's core
    surroundings: float  # median grain of a ring around it


@dataclass(frozen=True)
class DropFeatures:
    """Evidence for the outcome rules, measured inside the drop."""

    grain: float  # fraction of the drop's interior with precipitate-like grain
    round_blobs: int  # bubbles or phase-separation droplets
    fibres: int  # long, thin dark structures
    crystal_scores: tuple[float, ...]


@dataclass(frozen=True)
class BaselineResult:
    """The baseline's findings on the working copy, before scaling back to the image."""

    scale: float  # working copy = original * scale
    drop: np.ndarray | None  # bool, working-copy size
    drop_score: float
    crystals: tuple[CrystalCandidate, ...]
    features: DropFeatures
    probabilities: dict[str, float]


class BaselineAnalyser:
    """Implements ``analysis.Analyser`` without model weights; cheap, CPU only."""

    name = ANALYSER_NAME
    schema_name = BASELINE_SCHEMA
    # Its masks are made at the original size, so its targets follow the original rule
    # whatever ``target_rule`` is set to (that setting is about the CHiMP detectors).
    target_rule: str = str(TargetRule.ORIGINAL)

    def __init__(self, options: AnalysisOptions | None = None) -> None:
        options = options or AnalysisOptions()
        self.score_threshold = options.score_threshold
        self.margin_px = options.dispense_margin_px
        fingerprint = f"{ALGORITHM} v{VERSION} work={WORK_SIDE} score>={self.score_threshold}"
        self.models = (
            ModelRef("baseline", ALGORITHM, hashlib.sha256(fingerprint.encode()).hexdigest()),
        )

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        return [self.analyse_one(image) for image in images]

    def analyse_one(self, image: DecodedImage) -> ImageAnalysis:
        started = time.perf_counter()
        found = examine(image.pixels, score_threshold=self.score_threshold)
        height, width = image.height, image.width
        detections: list[Detection] = []
        drop: _Region | None = None
        if found.drop is not None:
            drop = _Region.from_work(found.drop, found.scale, width, height)
            detections.append(drop.detection("drop", found.drop_score))
        crystals: list[_Region] = []
        targets: list[CrystalTarget] = []
        for crystal in found.crystals:
            region = _Region.from_work(crystal.mask, found.scale, width, height)
            detection = region.detection("crystal", crystal.score)
            if detection.centroid is None:
                continue
            crystals.append(region)
            targets.append(CrystalTarget(*detection.centroid, crystal.score, len(detections)))
            detections.append(detection)
        geometry_started = time.perf_counter()
        if drop is None:
            dispense = DispensePoint(DispenseStatus.NO_DROP, drops_seen=0)
        else:
            dispense = _dispense_near_drop(drop, found.drop_score, crystals, self.margin_px)
        finished = time.perf_counter()
        return ImageAnalysis(
            analyser=self.name,
            schema_name=self.schema_name,
            models=self.models,
            width=width,
            height=height,
            probabilities=found.probabilities,
            detections=tuple(detections),
            crystal_targets=tuple(targets),
            dispense=dispense,
            timings_ms={
                "model": (geometry_started - started) * 1000,
                "geometry": (finished - geometry_started) * 1000,
            },
            target_rule=self.target_rule,
        )


# --- the analysis, on arrays -------------------------------------------------------------------


def examine(pixels: np.ndarray, *, score_threshold: float = 0.6) -> BaselineResult:
    """Find the drop and crystal candidates and score the outcome of one RGB or grey image."""
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    grey = np.asarray(grey, dtype=np.uint8) if grey.dtype != np.uint8 else grey
    scale = WORK_SIDE / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    work = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    drop, drop_score = find_drop(work)
    if drop is None:
        features = DropFeatures(grain=0.0, round_blobs=0, fibres=0, crystal_scores=())
        return BaselineResult(scale, None, 0.0, (), features, outcome_probabilities(features))
    texture = Grain.measure(work, drop)
    crystals, round_blobs, fibres = find_crystals(work, drop, texture)
    grain = grain_fraction(work, drop, texture)
    kept = tuple(
        crystal
        for crystal in crystals
        if crystal.score >= score_threshold and _credible(crystal, work, grain, round_blobs)
    )
    features = DropFeatures(
        grain=grain,
        round_blobs=round_blobs,
        fibres=fibres,
        crystal_scores=tuple(crystal.score for crystal in kept),
    )
    return BaselineResult(scale, drop, drop_score, kept, features, outcome_probabilities(features))


def find_drop(work: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The drop's mask on the working copy and a confidence (its convexity), or (None, 0)."""
    height, width = work.shape
    side = min(height, width)
    smooth = cv2.medianBlur(work, 2 * round(0.006 * side) + 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(0.05 * side) + 1,) * 2)
    blackhat = cv2.morphologyEx(smooth, cv2.MORPH_BLACKHAT, kernel)
    threshold = max(6.0, 2.0 * float(np.percentile(blackhat, 75)))
    dark = cv2.morphologyEx(
        (blackhat > threshold).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)
    )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - dark, connectivity=4)
    min_area = _MIN_AREA_FRACTION * height * width
    enclosed: list[tuple[np.ndarray, float]] = []
    compact: list[tuple[np.ndarray, float]] = []
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            continue
        region = labels == label
        # Holes of this bright region, with the frame as a wall: what it encloses.
        walled = np.pad(region, 1, constant_values=True)
        holes = (ndimage.binary_fill_holes(walled) & ~walled)[1:-1, 1:-1]
        hole_count, hole_labels = cv2.connectedComponents(holes.astype(np.uint8), connectivity=4)
        for hole in range(1, hole_count):
            candidate = hole_labels == hole
            if candidate.sum() < min_area or _touches_corner(candidate):
                continue
            convexity = _convexity(candidate)
            if convexity >= 0.85:
                enclosed.append((candidate, convexity))
        filled = ndimage.binary_fill_holes(region)
        if not _touches_corner(region) and region.sum() > 0.7 * filled.sum():
            convexity = _convexity(filled)
            if convexity >= 0.85:
                compact.append((filled, convexity))
    if enclosed:
        drop, convexity = min(enclosed, key=lambda item: int(item[0].sum()))
        return drop, round(convexity, 4)
    if compact:
        interior, convexity = max(compact, key=lambda item: int(item[0].sum()))
        grown = interior.copy()
        allowed = (interior | dark.astype(bool)).astype(np.uint8)
        for _ in range(round(0.06 * side)):  # over the meniscus, no further
            grown = cv2.dilate(grown.astype(np.uint8), np.ones((3, 3), np.uint8)) & allowed
        return ndimage.binary_fill_holes(grown.astype(bool)), round(convexity, 4)
    return None, 0.0


def find_crystals(
    work: np.ndarray, drop: np.ndarray, texture: Grain | None = None
) -> tuple[list[CrystalCandidate], int, int]:
    """Crystal candidates inside the drop, plus counts of round blobs and fibres seen."""
    side = min(work.shape)
    residual, edge_distance = _flatten_drop(work, drop)
    inner = drop & (edge_distance > max(3.0, 0.008 * side))
    deep = drop & (edge_distance > 0.02 * side)
    values = residual[inner]
    if values.size == 0:
        return [], 0, 0
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    threshold = max(40.0, 6.0 * spread)
    strong = (np.abs(residual) > threshold) & inner
    shifted = np.clip(residual * 2 + 128, 0, 255).astype(np.uint8)
    edges = (cv2.Canny(cv2.GaussianBlur(shifted, (0, 0), 1.0), 60, 140) > 0) & deep
    blobs = cv2.morphologyEx(
        (strong | edges).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)
    )
    texture = texture or Grain.measure(work, drop)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
    min_area = max(6, round(3 * (0.006 * side) ** 2))
    drop_area = int(drop.sum())
    candidates: list[CrystalCandidate] = []
    round_blobs = fibres = 0
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        blob = ndimage.binary_fill_holes(labels[y : y + h, x : x + w] == label)
        area = int(blob.sum())
        if area > 0.25 * drop_area:
            continue
        contour = max(
            cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0],
            key=cv2.contourArea,
        )
        hull = cv2.convexHull(contour)
        solidity = area / max(1.0, cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2)
        _, radius = cv2.minEnclosingCircle(contour)
        roundness = cv2.contourArea(contour) / max(1e-6, math.pi * radius * radius)
        if radius > 0.04 * side and area / (2 * radius) < 0.012 * side:  # long and thin
            fibres += 1
            continue
        if solidity < _SOLIDITY_LIMIT:
            continue
        if roundness > _ROUND_LIMIT:
            round_blobs += 1
            continue
        roughness, surroundings = _roughness(blob, x, y, texture, drop)
        if texture.grainy(surroundings) and (texture.grainy(roughness) or area < 4 * min_area):
            continue  # in precipitate only large blobs with smooth faces can be crystals
        local = residual[y : y + h, x : x + w]
        contrast = float(np.abs(local[blob]).mean())
        score = 0.4 + 0.3 * min(1.0, contrast / 80) + 0.3 * min(1.0, (solidity - 0.7) / 0.2)
        mask = np.zeros_like(drop)
        mask[y : y + h, x : x + w] = _without_shadow(blob, local, threshold)
        candidates.append(
            CrystalCandidate(
                mask,
                round(min(score, 0.99), 4),
                contrast,
                solidity,
                roundness,
                roughness,
                surroundings,
            )
        )
    candidates.sort(key=lambda candidate: -candidate.score)
    return candidates, round_blobs, fibres


def grain_fraction(work: np.ndarray, drop: np.ndarray, texture: Grain | None = None) -> float:
    """Fraction of the drop's interior whose fine-scale texture looks like precipitate."""
    texture = texture or Grain.measure(work, drop)
    side = min(work.shape)
    distance = cv2.distanceTransform(np.pad(drop.astype(np.uint8), 1, mode="edge"), cv2.DIST_L2, 5)[
        1:-1, 1:-1
    ]
    interior = distance > 0.04 * side
    if not interior.any():
        return 0.0
    local = cv2.GaussianBlur(texture.map, (0, 0), 0.01 * side)
    return round(float(np.mean(texture.grainy(local[interior]))), 4)


def outcome_probabilities(features: DropFeatures) -> dict[str, float]:
    """Rule evidence -> softmax over the four outcome classes (ranks, not calibrated)."""
    best_crystal = max(features.crystal_scores, default=0.0)
    logits = {
        "clear": 1.0,
        # Crystals win over precipitate: CHiMP's "crystals" includes drops with both.
        "crystals": -3.0 if not features.crystal_scores else 5.0 + 5.0 * (best_crystal - 0.6),
        "precipitate": min(4.5, 12.0 * (features.grain - 0.4)),
        "other": max(features.round_blobs - 2.0, 3.5 * min(features.fibres, 2)) - 1.0,
    }
    top = max(logits.values())
    weights = {name: math.exp(value - top) for name, value in logits.items()}
    total = sum(weights.values())
    return {name: round(weights[name] / total, 6) for name in CLASS_NAMES}


# --- helpers -----------------------------------------------------------------------------------


def _without_shadow(blob: np.ndarray, residual: np.ndarray, threshold: float) -> np.ndarray:
    """The blob less its shadow: keep what differs by 1.4 x the threshold (outlines, faces),
    with the holes that outlines enclose; a shadow is a milder darkening beside it."""
    strong = ndimage.binary_fill_holes(blob & (np.abs(residual) > 1.4 * threshold))
    return strong if strong.sum() >= 0.3 * blob.sum() else blob


def _credible(crystal: CrystalCandidate, work: np.ndarray, grain: float, round_blobs: int) -> bool:
    """Among phase-separation droplets (dark rims, bright middles) only a blob that stands out
    strongly (75 grey levels on average) is a crystal; in a grainy drop, clumps look like
    small crystals, so only a large blob standing out by 35 grey levels is."""
    if round_blobs >= _PHASE_SEPARATION_BLOBS and crystal.contrast < 75:
        return False
    if grain >= _GRAINY_DROP:
        return crystal.contrast >= 35 and crystal.mask.sum() >= 6e-4 * min(work.shape) ** 2
    return True


def _flatten_drop(work: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The drop minus its own look: brightness by distance from its edge, then a slow median.

    Returns the residual (float32, 0 outside the drop) and each pixel's distance to the edge.
    """
    side = min(work.shape)
    edge_distance = cv2.distanceTransform(
        np.pad(drop.astype(np.uint8), 1, mode="edge"), cv2.DIST_L2, 5
    )[1:-1, 1:-1]
    bins = edge_distance.astype(np.int32)
    smooth = cv2.medianBlur(work, 5).astype(np.float32)
    sums = np.bincount(bins[drop], weights=smooth[drop])
    counts = np.bincount(bins[drop])
    profile = ndimage.uniform_filter1d(sums / np.maximum(counts, 1), 3)
    residual = np.where(drop, work.astype(np.float32) - profile[bins], 0).astype(np.float32)
    # Slow changes (illumination, precipitate clouds) from a wide median, with the obvious
    # objects blanked out first so that a large crystal does not hide itself.
    obvious = cv2.dilate((np.abs(residual) > 40).astype(np.uint8), np.ones((5, 5), np.uint8))
    blanked = np.where(obvious > 0, 0, residual)
    shifted = np.clip(blanked + 128, 0, 255).astype(np.uint8)
    slow = cv2.medianBlur(shifted, 2 * round(0.06 * side) + 1).astype(np.float32) - 128
    return np.where(drop, residual - slow, 0).astype(np.float32), edge_distance


@dataclass(frozen=True, eq=False)
class Grain:
    """Fine-scale texture, |image - its Gaussian blur|, judged against the sensor's own noise.

    The noise is measured on the clean plastic outside the drop, so "grainy" means the same
    at any image size and noise level: precipitate, not the camera.
    """

    map: np.ndarray  # float32, working-copy size
    noise: float

    @classmethod
    def measure(cls, work: np.ndarray, drop: np.ndarray) -> Grain:
        values = work.astype(np.float32)
        texture = np.abs(values - cv2.GaussianBlur(values, (0, 0), 1.5))
        outside = texture[~drop]
        noise = float(np.median(outside)) if outside.size else float(np.percentile(texture, 10))
        return cls(texture, noise)

    def grainy(self, value: np.ndarray | float) -> np.ndarray:
        return np.asarray(value) > 1.6 * self.noise + 0.8


def _roughness(
    blob: np.ndarray, x: int, y: int, texture: Grain, drop: np.ndarray
) -> tuple[float, float]:
    """Median grain inside the blob's core and in a ring around it (3 to 5 pixels out)."""
    h, w = blob.shape
    grain = texture.map
    core = cv2.erode(blob.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    roughness = float(np.median(grain[y : y + h, x : x + w][core if core.any() else blob]))
    y0, y1 = max(0, y - 8), min(grain.shape[0], y + h + 8)
    x0, x1 = max(0, x - 8), min(grain.shape[1], x + w + 8)
    padded = np.zeros((y1 - y0, x1 - x0), np.uint8)
    padded[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = blob
    ring = (
        cv2.dilate(padded, np.ones((11, 11), np.uint8)).astype(bool)
        & ~cv2.dilate(padded, np.ones((5, 5), np.uint8)).astype(bool)
        & drop[y0:y1, x0:x1]
    )
    surroundings = float(np.median(grain[y0:y1, x0:x1][ring])) if ring.any() else 0.0
    return roughness, surroundings


def _touches_corner(mask: np.ndarray) -> bool:
    return bool(mask[0, 0] or mask[0, -1] or mask[-1, 0] or mask[-1, -1])


def _convexity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    contour = max(contours, key=cv2.contourArea)
    return float(cv2.contourArea(contour) / max(1.0, cv2.contourArea(cv2.convexHull(contour))))


@dataclass(frozen=True, eq=False)
class _Region:
    """A mask on the original image, kept as its bounding-box crop for cheap measurements."""

    x0: int
    y0: int
    crop: np.ndarray  # bool
    width: int
    height: int

    @classmethod
    def from_work(cls, mask: np.ndarray, scale: float, width: int, height: int) -> _Region:
        """Scale a working-copy mask back to the original image (nearest neighbour)."""
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, x1 = math.floor(cols[0] / scale), min(width, math.ceil((cols[-1] + 1) / scale))
        y0, y1 = math.floor(rows[0] / scale), min(height, math.ceil((rows[-1] + 1) / scale))
        # Original pixel (x, y) takes the working pixel its centre falls in, as cv2.resize does.
        source_cols = np.minimum(((np.arange(x0, x1) + 0.5) * scale).astype(int), mask.shape[1] - 1)
        source_rows = np.minimum(((np.arange(y0, y1) + 0.5) * scale).astype(int), mask.shape[0] - 1)
        crop = mask[np.ix_(source_rows, source_cols)]
        return cls(x0, y0, crop, width, height)

    def detection(self, label: str, score: float) -> Detection:
        rows = np.flatnonzero(self.crop.any(axis=1))
        cols = np.flatnonzero(self.crop.any(axis=0))
        mask = MaskCrop(self.crop, self.y0, self.x0, (self.height, self.width))
        if rows.size == 0:
            return Detection(label, float(score), (0.0, 0.0, 0.0, 0.0), mask, 0, None)
        box = (
            float(self.x0 + cols[0]),
            float(self.y0 + rows[0]),
            float(self.x0 + cols[-1] + 1),
            float(self.y0 + rows[-1] + 1),
        )
        centre = mask_centroid(self.crop)  # integer offsets keep the rounding exact
        centroid = None if centre is None else (centre[0] + self.x0, centre[1] + self.y0)
        return Detection(label, float(score), box, mask, int(self.crop.sum()), centroid)


def _dispense_near_drop(
    drop: _Region, drop_score: float, crystals: Sequence[_Region], margin_px: float
) -> DispensePoint:
    """``geometry.dispense_point`` on the drop's bounding box plus a one-pixel rim.

    Everything outside the drop is off limits anyway, so the distance transform over the box
    (the frame stays a wall where the drop touches it) gives exactly the full-image answer,
    at a third of the cost on a VMXi frame.
    """
    h, w = drop.crop.shape
    x0, y0 = max(0, drop.x0 - 1), max(0, drop.y0 - 1)
    x1, y1 = min(drop.width, drop.x0 + w + 1), min(drop.height, drop.y0 + h + 1)

    def boxed(region: _Region) -> np.ndarray:
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        rh, rw = region.crop.shape
        sx0, sy0 = max(region.x0, x0), max(region.y0, y0)
        sx1, sy1 = min(region.x0 + rw, x1), min(region.y0 + rh, y1)
        if sx0 < sx1 and sy0 < sy1:
            mask[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region.crop[
                sy0 - region.y0 : sy1 - region.y0, sx0 - region.x0 : sx1 - region.x0
            ]
        return mask

    point = dispense_point([boxed(drop)], [drop_score], [boxed(c) for c in crystals], margin_px)
    if point.x is None or point.y is None:
        return point
    return DispensePoint(
        status=point.status,
        x=point.x + x0,
        y=point.y + y0,
        clearance_px=point.clearance_px,
        drops_seen=point.drops_seen,
    )
