"""What an analyser produces for one image: the contract between the models, the geometry and
the result writer. Plain frozen dataclasses; no torch, no SQL.

Coordinates are (x, y) pixels of the *original* image, origin at the top-left corner, x to the
right, y down -- the convention of ISPyB and SynchWeb. Boxes are (x0, y0, x1, y1) in the same
pixels. Masks are boolean arrays of shape (height, width) of the original image.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Canonical CHiMP class names, as the published classifier's ``class_names`` spell them.
CLASS_NAMES: tuple[str, ...] = ("clear", "crystals", "other", "precipitate")

# How each canonical class is named in ISPyB's CHIMP auto-score schema (ISPyB 5.x seed rows).
ISPYB_SCORE_CLASS: Mapping[str, str] = {
    "crystals": "crystal",
    "clear": "clear",
    "precipitate": "precipitant",
    "other": "other",
}

# The one mapping a user is shown where the classifier's own names appear (evaluation, whose
# tables follow the paper): every other output uses ISPyB's names.
CLASS_NAMES_NOTE = (
    "classes: ISPyB's names (crystal, clear, precipitant, other); the CHiMP classifier file "
    "and the paper call crystal 'crystals' and precipitant 'precipitate'"
)


def ispyb_class(name: str | None) -> str | None:
    """A class name as ISPyB and SynchWeb show it (``crystals`` -> ``crystal``)."""
    return None if name is None else ISPYB_SCORE_CLASS.get(name, name)


CHIMP_SCHEMA = "CHIMP"
BASELINE_SCHEMA = "BASELINE_CV"  # the weight-free analyser never writes under CHIMP


class DispenseStatus(enum.StrEnum):
    """Outcome of the dispense-point search; stored verbatim in the worker's tables."""

    OK = "ok"
    NO_DROP = "no drop"
    NO_SAFE_POINT = "no safe point"


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result: its role, architecture name and weight-file checksum."""

    role: str  # "classifier", "vmxi_detector", "xchem_detector" or "baseline"
    name: str
    sha256: str


@dataclass(frozen=True, eq=False)
class Detection:
    """One kept instance from a detector (after score and mask thresholds)."""

    label: str  # "crystal" or "drop"
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
    mask: np.ndarray | None  # bool (H, W) of the original image; None once persisted
    mask_area: int  # pixels of the original image
    centroid: tuple[int, int] | None  # rounded centre of mass (x, y); None for an empty mask
    model_role: str | None = None  # the ModelRef.role that found it, e.g. "xchem_detector"


@dataclass(frozen=True)
class CrystalTarget:
    """A point ISPyB staff can queue for X-ray data collection."""

    x: int
    y: int
    score: float
    detection_index: int  # index into ImageAnalysis.detections


@dataclass(frozen=True)
class DispensePoint:
    """Where to dispense compound: farthest from the drop edge and from every crystal."""

    status: DispenseStatus
    x: int | None = None
    y: int | None = None
    clearance_px: float | None = None  # distance to the nearest edge or crystal
    drops_seen: int = 0


@dataclass(frozen=True)
class ImageAnalysis:
    """Everything written for one image."""

    analyser: str  # "chimp" or "baseline"
    schema_name: str  # CHIMP_SCHEMA or BASELINE_SCHEMA
    models: tuple[ModelRef, ...]
    width: int
    height: int
    probabilities: Mapping[str, float] | None = None  # canonical class name -> probability
    detections: tuple[Detection, ...] = ()
    crystal_targets: tuple[CrystalTarget, ...] = ()
    dispense: DispensePoint | None = None  # None when no drop detector ran
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def top_class(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=lambda name: self.probabilities[name])  # type: ignore[index]


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A fully decoded micrograph: RGB uint8 (H, W, 3); greyscale is replicated to 3 channels."""

    pixels: np.ndarray
    source: str  # path or URL it came from, for messages
    was_greyscale: bool = False
    fetch_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


class Analyser(Protocol):
    """Turns decoded images into analyses. Implementations: CHiMP models, the baseline."""

    name: str
    schema_name: str
    models: tuple[ModelRef, ...]

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        """One ImageAnalysis per image, in order. Raises only for model-level faults."""
        ...
