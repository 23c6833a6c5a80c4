"""Score hit calling on labelled images: classifier alone, detector alone, and both combined.

Every image goes through the worker's own analyser (CHiMP models from the settings, or the
weight-free baseline), and its P(crystal) and crystals through the three rules of
``hits.rules``. Labels are collapsed to 'crystals' / 'no crystals' as for the paper's Tables 7
and 9. Thresholds are the configured ones, or chosen on a validation split
(``hits.choose``) and then judged on the images not used to choose them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chimp_worker.analysis import Analyser
from chimp_worker.errors import DatasetError, ImageError
from chimp_worker.evaluate.classifier import read_image
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.evaluate.metrics import CRYSTALS, ClassificationMetrics, collapse_to_crystals
from chimp_worker.hits.choose import Labelled, choose_thresholds, rule_metrics, verdicts
from chimp_worker.hits.evidence import evidence_from_analysis
from chimp_worker.hits.rules import HIT_RULES, HitRule, HitThresholds
from chimp_worker.log import get_logger

log = get_logger(__name__)

Progress = Callable[[int], None]
RULE_TITLES: dict[HitRule, str] = {
    "classifier": "classifier alone",
    "detector": "detector alone",
    "combined": "combined",
}


@dataclass(frozen=True)
class ImageHits:
    """One labelled image: what the analyser gave the rules, or why it gave nothing."""

    row: LabelledImage
    labelled: Labelled
    error: str | None = None


def analyse_rows(
    analyser: Analyser,
    rows: Sequence[LabelledImage],
    *,
    max_pixels: int = 40_000_000,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> list[ImageHits]:
    """Run the analyser over the rows (in batches); unreadable images keep no evidence."""
    truth = collapse_to_crystals(row.label for row in rows)
    out: list[ImageHits] = []
    for start in range(0, len(rows), batch_size):
        chunk = list(enumerate(rows[start : start + batch_size], start=start))
        readable = []
        for index, row in chunk:
            try:
                readable.append((index, row, read_image(row.path, max_pixels)))
            except ImageError as error:
                log.warning("evaluate.image_failed", path=str(row.path), reason=error.reason)
                out.append(ImageHits(row, Labelled(None, truth[index] == CRYSTALS), str(error)))
        analyses = analyser.analyse([image for *_, image in readable]) if readable else []
        for (index, row, _image), analysis in zip(readable, analyses, strict=True):
            labelled = Labelled(evidence_from_analysis(analysis), truth[index] == CRYSTALS)
            out.append(ImageHits(row, labelled))
        if progress is not None:
            progress(len(chunk))
    order = {id(row): n for n, row in enumerate(rows)}
    return sorted(out, key=lambda item: order[id(item.row)])


def split_by_label(
    images: Sequence[ImageHits], fraction: float, seed: int
) -> tuple[list[ImageHits], list[ImageHits]]:
    """(test, validation): ``fraction`` of the crystals and of the other images to validation,
    chosen reproducibly from ``seed``; at least one of each kind stays on either side."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {fraction}")
    by_kind: dict[bool, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_kind[image.labelled.crystals].append(index)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for kind in (True, False):
        members = by_kind.get(kind, [])
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held.update(int(i) for i in rng.choice(members, size=count, replace=False))
    if not held:
        raise DatasetError("too few images to hold any out for choosing thresholds; give --val")
    return (
        [image for i, image in enumerate(images) if i not in held],
        [image for i, image in enumerate(images) if i in held],
    )


@dataclass(frozen=True)
class HitEvaluation:
    """The three rules on the test images, and (when chosen) on the validation images."""

    analyser: str
    test_set: str
    thresholds: HitThresholds
    chosen: bool  # thresholds chosen on ``validation`` (else: the configured ones)
    test: tuple[ImageHits, ...]
    validation: tuple[ImageHits, ...] = ()

    def metrics(self, rule: HitRule, on: str = "test") -> ClassificationMetrics:
        images = self.test if on == "test" else self.validation
        return rule_metrics([i.labelled for i in images], self.thresholds, rule)

    def provenance(self) -> dict[str, Any]:
        """What the thresholds file records about where its thresholds came from."""
        return {
            "validation_images": len(self.validation),
            "test_set": self.test_set,
            "test_images": len(self.test),
            "f1": {
                rule: {
                    on: round(self.metrics(rule, on).scores(CRYSTALS).f1, 4)
                    for on in ("validation", "test")
                }
                for rule in HIT_RULES
            },
        }

    def as_dict(self) -> dict[str, Any]:
        def block(on: str) -> dict[str, Any]:
            return {rule: self.metrics(rule, on).as_dict() for rule in HIT_RULES}

        images = []
        for on, group in (("test", self.test), ("validation", self.validation)):
            labelled = [i.labelled for i in group]
            per_rule = {rule: verdicts(labelled, self.thresholds, rule) for rule in HIT_RULES}
            for n, image in enumerate(group):
                evidence = image.labelled.evidence
                images.append(
                    {
                        "path": str(image.row.path),
                        "split": on,
                        "crystals": image.labelled.crystals,
                        "p_crystal": None if evidence is None else evidence.p_crystal,
                        "crystal_scores": None
                        if evidence is None or evidence.crystals is None
                        else [c.score for c in evidence.crystals],
                        "verdicts": {rule: per_rule[rule][n] for rule in HIT_RULES},
                        "error": image.error,
                    }
                )
        return {
            "kind": "hits",
            "analyser": self.analyser,
            "test_set": self.test_set,
            "thresholds": self.thresholds.as_dict(),
            "chosen_on_validation": self.chosen,
            "test": block("test"),
            "validation": block("validation") if self.validation else None,
            "images": images,
        }


def evaluate_hits(
    analyser: Analyser,
    rows: Sequence[LabelledImage],
    *,
    test_set: str,
    thresholds: HitThresholds,
    validation_rows: Sequence[LabelledImage] | None = None,
    choose: bool = False,
    val_fraction: float = 0.3,
    seed: int = 0,
    min_detector_score: float = 0.6,
    max_pixels: int = 40_000_000,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> HitEvaluation:
    """Judge the three rules on ``rows``; with ``choose``, first choose their thresholds on
    ``validation_rows`` (or on a split of ``rows`` held out for it)."""
    if not rows:
        raise DatasetError("no labelled images to evaluate")
    images = analyse_rows(
        analyser, rows, max_pixels=max_pixels, batch_size=batch_size, progress=progress
    )
    validation: list[ImageHits] = []
    if validation_rows:
        validation = analyse_rows(
            analyser,
            validation_rows,
            max_pixels=max_pixels,
            batch_size=batch_size,
            progress=progress,
        )
    elif choose:
        images, validation = split_by_label(images, val_fraction, seed)
    if choose:
        try:
            chosen = choose_thresholds(
                [i.labelled for i in validation],
                min_detector_score=min_detector_score,
                start=thresholds,
            )
        except ValueError as error:
            raise DatasetError(f"cannot choose thresholds: {error}") from None
        thresholds = chosen.thresholds
    return HitEvaluation(
        analyser=analyser.name,
        test_set=test_set,
        thresholds=thresholds,
        chosen=choose,
        test=tuple(images),
        validation=tuple(validation),
    )
