"""Hit calling: one verdict per image from the classifier's P(crystal) and the detector's crystals.

The paper (section 5) found the detectors recall crystals as well as the classifier or better
but over-detect (low precision), while the classifier has the better F1, and suggested
combining the two. Three rules, each with named thresholds (``HitThresholds``):

``classifier``  hit when P(crystal) >= ``classifier_threshold``; score = P(crystal).
``detector``    a crystal *counts* when its score >= ``detector_score`` and its mask covers at
                least ``detector_min_area_px`` pixels; hit when at least ``detector_min_count``
                crystals count; score = the best counted crystal's score (0 when fewer
                than ``detector_min_count`` count).
``combined``    score = max((P + D) / 2, P if P >= ``classifier_sure`` else 0), where P is
                P(crystal) and D the detector's score (0 when fewer than
                ``detector_min_count`` crystals count); hit when score >= ``combined_threshold``.
                The detector's confirmation lifts a hesitant classifier over the line, its
                detections alone do not (over-detection), and a sure classifier needs no
                confirmation. With ``classifier_sure`` above ``combined_threshold`` every hit
                scores higher than every non-hit, so the score ranks drops consistently.

When only one model ran (no classifier, or no detector), ``combined`` falls back to that
model's own rule. Pure functions: no I/O, no torch, no SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

HitRule = Literal["combined", "classifier", "detector"]
HIT_RULES: tuple[HitRule, ...] = ("combined", "classifier", "detector")


@dataclass(frozen=True)
class HitThresholds:
    """The named thresholds of the three rules (defaults: the worker's own score threshold for
    detections, a classifier that must prefer crystals, a combined rule that needs agreement)."""

    classifier_threshold: float = 0.5
    detector_score: float = 0.6
    detector_min_count: int = 1
    detector_min_area_px: int = 0
    combined_threshold: float = 0.55
    classifier_sure: float = 0.9

    def __post_init__(self) -> None:
        for name in ("classifier_threshold", "detector_score", "combined_threshold"):
            _check_unit(name, getattr(self, name))
        _check_unit("classifier_sure", self.classifier_sure)
        _check_count("detector_min_count", self.detector_min_count, minimum=1)
        _check_count("detector_min_area_px", self.detector_min_area_px, minimum=0)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "thresholds") -> HitThresholds:
        """Build from a mapping (a thresholds file's entry); unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown threshold(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value}")


@dataclass(frozen=True)
class CrystalEvidence:
    """One crystal the detector kept: its score and mask area in image pixels."""

    score: float
    area_px: int


@dataclass(frozen=True)
class ImageEvidence:
    """What the models said about one image. ``p_crystal`` None: no classifier ran;
    ``crystals`` None: no detector ran (an empty tuple is a detector that found nothing)."""

    p_crystal: float | None
    crystals: tuple[CrystalEvidence, ...] | None

    @classmethod
    def of(
        cls, p_crystal: float | None, crystals: Iterable[tuple[float, int]] | None
    ) -> ImageEvidence:
        return cls(
            None if p_crystal is None else float(p_crystal),
            None
            if crystals is None
            else tuple(CrystalEvidence(float(s), int(a)) for s, a in crystals),
        )


@dataclass(frozen=True)
class HitVerdict:
    """A rule's decision on one image, with what it was based on."""

    rule: HitRule  # the rule that decided (a fallback when a model was missing)
    hit: bool
    score: float  # 0..1, comparable across drops judged by the same rule
    crystal_count: int  # counted crystals (score and area thresholds met)
    crystal_area_px: int  # their summed mask areas
    largest_crystal_px: int  # the largest counted crystal's mask area
    best_crystal_score: float | None  # None: no crystal counted (or no detector)


def counted_crystals(
    crystals: Iterable[CrystalEvidence], thresholds: HitThresholds
) -> list[CrystalEvidence]:
    """The crystals that count: score and mask area at or above their thresholds."""
    return [
        c
        for c in crystals
        if c.score >= thresholds.detector_score and c.area_px >= thresholds.detector_min_area_px
    ]


def call_hit(
    evidence: ImageEvidence, thresholds: HitThresholds, rule: HitRule = "combined"
) -> HitVerdict:
    """The verdict of ``rule`` on one image (see the module docstring for the rules)."""
    if rule not in HIT_RULES:
        raise ValueError(f"unknown hit rule {rule!r}; expected one of {', '.join(HIT_RULES)}")
    counted = counted_crystals(evidence.crystals or (), thresholds)
    detector_hit = len(counted) >= thresholds.detector_min_count
    detector_score = max((c.score for c in counted), default=0.0)

    def verdict(decided_by: HitRule, hit: bool, score: float) -> HitVerdict:
        return HitVerdict(
            decided_by,
            hit,
            score,
            crystal_count=len(counted),
            crystal_area_px=sum(c.area_px for c in counted),
            largest_crystal_px=max((c.area_px for c in counted), default=0),
            best_crystal_score=detector_score if counted else None,
        )

    p_crystal = evidence.p_crystal
    if rule == "combined" and (p_crystal is None or evidence.crystals is None):
        rule = "detector" if p_crystal is None else "classifier"
    if rule == "classifier":
        p = _clamp(p_crystal or 0.0)
        return verdict("classifier", p >= thresholds.classifier_threshold, p)
    if rule == "detector":
        score = _clamp(detector_score) if detector_hit else 0.0
        return verdict("detector", detector_hit, score)
    p = _clamp(p_crystal or 0.0)
    confirmation = _clamp(detector_score) if detector_hit else 0.0
    score = max((p + confirmation) / 2.0, p if p >= thresholds.classifier_sure else 0.0)
    return verdict("combined", score >= thresholds.combined_threshold, score)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, float(value)))
