"""Choosing the hit thresholds on a labelled validation split: pure grid searches.

Each rule's thresholds are chosen to maximise the F1 of the 'crystals' class on the
validation images (ties: the higher precision, then the thresholds nearest the ones in force,
so a flat stretch of F1 does not push a threshold to the grid's edge), in three steps that
share what they can:

1. ``classifier_threshold`` over 0.05, 0.10 ... 0.95;
2. the detector's ``detector_score`` (from the analyser's own score threshold up, since weaker
   detections are never stored), ``detector_min_count`` 1-3 and ``detector_min_area_px``
   (0 or the 10th, 25th, 50th percentile of the validation crystals' areas);
3. the combined rule's ``combined_threshold`` and ``classifier_sure`` (never below it, so
   scores rank consistently), with the detector thresholds of step 2.

The metric is the paper's (``evaluate.metrics``): an image without a prediction is a miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from chimp_worker.evaluate.metrics import (
    BINARY_CLASSES,
    CRYSTALS,
    NO_CRYSTALS,
    ClassificationMetrics,
    classification_metrics,
)
from chimp_worker.hits.rules import HIT_RULES, HitRule, HitThresholds, ImageEvidence, call_hit

UNIT_GRID = tuple(round(0.05 * n, 2) for n in range(1, 20))  # 0.05 .. 0.95
SURE_GRID = tuple(round(0.05 * n, 2) for n in range(10, 21))  # 0.50 .. 1.00
COUNT_GRID = (1, 2, 3)
AREA_PERCENTILES = (10, 25, 50)


@dataclass(frozen=True)
class Labelled:
    """One validation or test image: its evidence (None: it could not be analysed) and truth."""

    evidence: ImageEvidence | None
    crystals: bool  # the expert label is 'crystals'


def verdicts(
    images: Sequence[Labelled], thresholds: HitThresholds, rule: HitRule
) -> list[str | None]:
    """'crystals' / 'no crystals' per image by the rule; None for an image never analysed."""
    out: list[str | None] = []
    for image in images:
        if image.evidence is None:
            out.append(None)
        else:
            hit = call_hit(image.evidence, thresholds, rule).hit
            out.append(CRYSTALS if hit else NO_CRYSTALS)
    return out


def rule_metrics(
    images: Sequence[Labelled], thresholds: HitThresholds, rule: HitRule
) -> ClassificationMetrics:
    truth = [CRYSTALS if image.crystals else NO_CRYSTALS for image in images]
    return classification_metrics(truth, verdicts(images, thresholds, rule), BINARY_CLASSES)


def distance(a: HitThresholds, b: HitThresholds) -> float:
    """How far two sets of thresholds are apart (probabilities as they are, the count in
    steps of one, the area relative to the larger of the two)."""
    area = max(a.detector_min_area_px, b.detector_min_area_px, 1)
    return (
        abs(a.classifier_threshold - b.classifier_threshold)
        + abs(a.detector_score - b.detector_score)
        + abs(a.detector_min_count - b.detector_min_count)
        + abs(a.detector_min_area_px - b.detector_min_area_px) / area
        + abs(a.combined_threshold - b.combined_threshold)
        + abs(a.classifier_sure - b.classifier_sure)
    )


def _best(
    images: Sequence[Labelled],
    candidates: Iterable[HitThresholds],
    rule: HitRule,
    anchor: HitThresholds,
) -> tuple[HitThresholds, ClassificationMetrics]:
    best: tuple[tuple[float, float, float], HitThresholds, ClassificationMetrics] | None = None
    for candidate in candidates:
        metrics = rule_metrics(images, candidate, rule)
        scores = metrics.scores(CRYSTALS)
        key = (scores.f1, scores.precision, -round(distance(candidate, anchor), 9))
        if best is None or key > best[0]:
            best = (key, candidate, metrics)
    assert best is not None
    return best[1], best[2]


def area_grid(images: Sequence[Labelled]) -> tuple[int, ...]:
    """0 and percentiles of the crystal areas seen, so the area threshold fits the images."""
    areas = [
        crystal.area_px
        for image in images
        if image.evidence is not None
        for crystal in image.evidence.crystals or ()
    ]
    if not areas:
        return (0,)
    return tuple(sorted({0, *(int(np.percentile(areas, p)) for p in AREA_PERCENTILES)}))


@dataclass(frozen=True)
class Choice:
    """The chosen thresholds and each rule's validation metrics with them."""

    thresholds: HitThresholds
    validation: dict[HitRule, ClassificationMetrics]


def choose_thresholds(
    images: Sequence[Labelled],
    *,
    min_detector_score: float = 0.6,
    start: HitThresholds | None = None,
) -> Choice:
    """Thresholds for all three rules, chosen on ``images`` (see the module docstring)."""
    if not any(image.crystals for image in images):
        raise ValueError("the validation images need at least one 'crystals' image")
    base = start or HitThresholds()
    classifier, _ = _best(
        images, (replace(base, classifier_threshold=t) for t in UNIT_GRID), "classifier", base
    )
    scores = tuple(s for s in UNIT_GRID if s >= min_detector_score - 1e-9) or (min_detector_score,)
    detector, _ = _best(
        images,
        (
            replace(classifier, detector_score=s, detector_min_count=n, detector_min_area_px=a)
            for s in scores
            for n in COUNT_GRID
            for a in area_grid(images)
        ),
        "detector",
        base,
    )
    combined, _ = _best(
        images,
        (
            replace(detector, combined_threshold=c, classifier_sure=sure)
            for c in UNIT_GRID
            for sure in SURE_GRID
            if sure >= c
        ),
        "combined",
        base,
    )
    return Choice(combined, {rule: rule_metrics(images, combined, rule) for rule in HIT_RULES})
