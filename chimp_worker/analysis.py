"""What an analyser produces for one image: the contract between the models, the geometry and
the result writer. Plain frozen dataclasses; no torch, no SQL.

Coordinates are (x, y) pixels of the *original* image, origin at the top-left corner, x to the
right, y down -- the convention of ISPyB and SynchWeb. Boxes are (x0, y0, x1, y1) in the same
pixels. A detection's mask travels as a ``MaskCrop``: only the rectangle around the object,
placed in its frame (the original image, or the detector's input for ``model_mask``); ``full()``
gives the whole-frame boolean array to a consumer that needs one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from chimp_worker.config import Settings

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


class TargetRule(enum.StrEnum):
    """How crystal targets and the dispense point are computed from detector masks; stored with
    every result (``chimp_image_result.targetRule``), so a change of rule makes results stale.

    ``PUBLISHED`` (the default) is the published CHiMP arithmetic: masks thresholded at the
    detector's input size (1352 x 1688), centre of mass and distance transform there, rounded
    half to even, scaled to the original image and rounded again. ``ORIGINAL`` resizes each mask
    to the original image first and computes there (halves rounded up, the image frame counting
    as a drop edge): what this worker did before, and what the weight-free baseline does.
    """

    PUBLISHED = "published"
    ORIGINAL = "original"


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
class MaskCrop:
    """A boolean mask kept as the rectangle that holds it: ``values`` (h, w) with its top-left
    pixel at (``top``, ``left``) of a ``frame`` = (height, width) image, False elsewhere.

    Keeps per-detection memory at the object's size instead of the whole frame's.
    """

    values: np.ndarray  # bool (h, w)
    top: int
    left: int
    frame: tuple[int, int]  # (height, width) of the image the mask belongs to

    def __post_init__(self) -> None:
        height, width = self.values.shape
        frame_height, frame_width = self.frame
        if not (0 <= self.top <= frame_height - height and 0 <= self.left <= frame_width - width):
            raise ValueError(
                f"a {height} x {width} crop at (top {self.top}, left {self.left}) does not fit "
                f"its {self.frame[0]} x {self.frame[1]} frame"
            )

    @classmethod
    def from_full(cls, mask: np.ndarray) -> MaskCrop:
        """The crop of a whole-frame mask, trimmed to the rows and columns it occupies."""
        binary = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(binary.any(axis=1))
        cols = np.flatnonzero(binary.any(axis=0))
        frame = (int(binary.shape[0]), int(binary.shape[1]))
        if rows.size == 0:
            return cls(np.zeros((0, 0), dtype=bool), 0, 0, frame)
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(binary[top:bottom, left:right].copy(), top, left, frame)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.values))

    def full(self) -> np.ndarray:
        """The mask as a whole-frame boolean array."""
        mask = np.zeros(self.frame, dtype=bool)
        height, width = self.values.shape
        mask[self.top : self.top + height, self.left : self.left + width] = self.values
        return mask


@dataclass(frozen=True, eq=False)
class Detection:
    """One kept instance from a detector (after score and mask thresholds)."""

    label: str  # "crystal" or "drop"
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
    mask: MaskCrop | None  # at the original image's size; None once persisted
    mask_area: int  # pixels of the original image
    centroid: tuple[int, int] | None  # the crystal target (x, y) by the result's TargetRule
    model_role: str | None = None  # the ModelRef.role that found it, e.g. "xchem_detector"
    # The thresholded mask at the detector's input size (1352 x 1688), where the published
    # rule computes targets; None for analysers without one (the baseline).
    model_mask: MaskCrop | None = None


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
    # The TargetRule value the targets and dispense point were computed by (None: the
    # analyser computes none by a rule, e.g. test doubles).
    target_rule: str | None = None

    @property
    def top_class(self) -> str | None:
        probabilities = self.probabilities
        if not probabilities:
            return None
        return max(probabilities, key=lambda name: probabilities[name])


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


Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class AnalysisOptions:
    """How the models are run. The fields ``from_settings`` copies are configurable; the rest
    are fixed in the worker and switched off only by the benchmark's plain reference."""

    classifier_input_size: int = 512
    score_threshold: float = 0.6
    mask_threshold: float = 0.5
    clahe_clip_limit: float = 2.0
    dispense_margin_px: float = 0.0
    # How targets and the dispense point are computed (analysis.TargetRule): the published
    # arithmetic at the detector's input size unless a facility chooses the original size.
    target_rule: TargetRule = TargetRule.PUBLISHED
    batch_size: int = 4
    precision: Precision = "fp32"
    # None: apply score_threshold inside the model (fast, same results). The benchmark's
    # plain reference run sets torchvision's 0.05 here, as the published tooling does.
    model_score_threshold: float | None = None
    # Classifier in channels-last memory format: the fused blocks below then need no permute
    # copies (on its own it saved only those, a few per cent). Mask R-CNN stays contiguous:
    # channels-last made its backbone slower on CPU.
    channels_last: bool = True
    # CPU fp32: each ConvNeXt block's MLP as two oneDNN matmuls with bias, GELU, layer scale
    # and residual fused in (``classifier_fusion.py``): same probabilities to float rounding,
    # faster than the published eager path. Off in the benchmark's reference.
    fuse_classifier: bool = True
    # Prepare the next images (resize, CLAHE) on a helper thread during inference.
    prefetch: bool = True
    # Paste every mask into a full 1352 x 1688 map as torchvision does (the reference), rather
    # than only around its box: same masks, 9 MB and some milliseconds less per detection.
    paste_full_masks: bool = False
    # Fold the detector's frozen batch norm into its convolutions (``fusion.py``): about a
    # fifth faster on CPU, outputs equal to float rounding. Off in the benchmark's reference.
    fold_batchnorm: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> AnalysisOptions:
        return cls(
            classifier_input_size=settings.classifier_input_size,
            score_threshold=settings.score_threshold,
            mask_threshold=settings.mask_threshold,
            clahe_clip_limit=settings.clahe_clip_limit,
            dispense_margin_px=settings.dispense_margin_px,
            target_rule=TargetRule(settings.target_rule),
            batch_size=settings.batch_size,
            precision=settings.precision,
        )


class Analyser(Protocol):
    """Turns decoded images into analyses. Implementations: CHiMP models, the baseline.

    Its descriptive members are read-only here (properties) so that an implementation may
    declare them narrower, as the baseline's ``target_rule: str`` is; callers never set them.
    """

    @property
    def name(self) -> str: ...

    @property
    def schema_name(self) -> str: ...

    @property
    def models(self) -> tuple[ModelRef, ...]: ...

    @property
    def target_rule(self) -> str | None:
        """The TargetRule its results carry; part of what makes them stale."""
        ...

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        """One ImageAnalysis per image, in order. Raises only for model-level faults."""
        ...
