"""Hit rules, drop courses, promise and the thresholds file: pure functions, exact values."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from chimp_worker.errors import ConfigError
from chimp_worker.hits import (
    HitThresholds,
    ImageEvidence,
    Observation,
    call_hit,
    drop_course,
    load_policy,
    rank_by_promise,
    write_thresholds,
)
from chimp_worker.hits.course import growth_term, promise_score, size_term

DEFAULTS = HitThresholds()


def evidence(p: float | None, *crystals: tuple[float, int]) -> ImageEvidence:
    return ImageEvidence.of(p, crystals)


def test_the_classifier_rule_thresholds_p_crystal_and_scores_with_it() -> None:
    assert call_hit(evidence(0.5), DEFAULTS, "classifier").hit
    verdict = call_hit(evidence(0.49, (0.9, 400)), DEFAULTS, "classifier")
    assert (verdict.hit, verdict.score, verdict.rule) == (False, 0.49, "classifier")
    assert (verdict.crystal_count, verdict.crystal_area_px, verdict.best_crystal_score) == (
        1,
        400,
        0.9,
    )


def test_the_detector_rule_counts_crystals_over_score_and_area_thresholds() -> None:
    strict = HitThresholds(detector_score=0.7, detector_min_count=2, detector_min_area_px=50)
    found = evidence(0.1, (0.95, 300), (0.72, 60), (0.69, 900), (0.99, 49))
    verdict = call_hit(found, strict, "detector")
    # 0.69 is under the score threshold and 49 px under the area threshold: two count
    assert (verdict.hit, verdict.crystal_count, verdict.crystal_area_px) == (True, 2, 360)
    assert (verdict.score, verdict.largest_crystal_px, verdict.best_crystal_score) == (
        0.95,
        300,
        0.95,
    )
    one = call_hit(evidence(0.1, (0.95, 300)), strict, "detector")
    assert (one.hit, one.score, one.crystal_count) == (False, 0.0, 1)


def test_the_combined_rule_lets_the_detector_confirm_a_hesitant_classifier() -> None:
    # (P + D) / 2 against 0.55: confirmed at P 0.4 by a 0.8 crystal, not without it
    assert call_hit(evidence(0.4, (0.8, 100)), DEFAULTS).score == pytest.approx(0.6)
    assert call_hit(evidence(0.4, (0.8, 100)), DEFAULTS).hit
    alone = call_hit(evidence(0.4), DEFAULTS)
    assert (alone.hit, alone.score) == (False, 0.2)
    # the detector alone (over-detection) is not enough: P 0.1 with a 0.95 crystal
    assert not call_hit(evidence(0.1, (0.95, 500)), DEFAULTS).hit
    # a sure classifier needs no confirmation, and keeps its own score
    sure = call_hit(evidence(0.93), DEFAULTS)
    assert (sure.hit, sure.score, sure.rule) == (True, 0.93, "combined")


def test_every_combined_hit_scores_above_every_combined_miss() -> None:
    verdicts = [
        call_hit(evidence(p / 20, *([(d / 20, 100)] if d else [])), DEFAULTS)
        for p in range(21)
        for d in (0, 12, 14, 16, 18, 20)
    ]
    hits = [v.score for v in verdicts if v.hit]
    misses = [v.score for v in verdicts if not v.hit]
    assert hits
    assert misses
    assert min(hits) >= DEFAULTS.combined_threshold > max(misses)


def test_combined_falls_back_to_the_model_that_ran() -> None:
    no_detector = call_hit(ImageEvidence.of(0.6, None), DEFAULTS)
    assert (no_detector.rule, no_detector.hit, no_detector.score) == ("classifier", True, 0.6)
    no_classifier = call_hit(ImageEvidence.of(None, [(0.8, 10)]), DEFAULTS)
    assert (no_classifier.rule, no_classifier.hit, no_classifier.score) == ("detector", True, 0.8)
    nothing = call_hit(ImageEvidence.of(None, None), DEFAULTS)
    assert (nothing.rule, nothing.hit, nothing.crystal_count) == ("detector", False, 0)


def test_bad_thresholds_and_rules_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"classifier_threshold must be within 0\.\.1, got 1\.5"):
        HitThresholds(classifier_threshold=1.5)
    with pytest.raises(ValueError, match="detector_min_count must be a whole number >= 1"):
        HitThresholds(detector_min_count=0)
    with pytest.raises(ValueError, match=r"unknown threshold.*claasifier_threshold"):
        HitThresholds.from_mapping({"claasifier_threshold": 0.5})
    with pytest.raises(ValueError, match="unknown hit rule 'vote'"):
        call_hit(evidence(0.5), DEFAULTS, "vote")  # type: ignore[arg-type]


def observation(number: int, hit: bool, area: float, score: float = 0.9, **more) -> Observation:
    values = {
        "containerInspectionId": 100 + number,
        "inspection_number": number,
        "inspected_at": dt.datetime(2024, 1, number),
        "blSampleImageId": 1000 + number,
        "p_crystal": score,
        "crystal_count": 1 if area else 0,
        "crystal_area_px": int(area),
        "crystal_area_um2": area,
        "largest_crystal_um2": area,
        "best_crystal_score": score if area else None,
        "score": score,
        "hit": hit,
    }
    values.update(more)
    return Observation(**values)


def test_a_drop_course_finds_the_first_hit_and_the_growth_since() -> None:
    course = drop_course(
        [
            observation(3, True, 600.0, 0.8),
            observation(1, False, 0.0, 0.1),
            observation(2, True, 200.0, 0.7),
        ]
    )
    assert [o.inspection_number for o in course.observations] == [1, 2, 3]
    assert course.first_hit is not None
    assert course.first_hit.inspection_number == 2
    assert (course.growth_um2, course.growth_factor) == (400.0, 3.0)
    # promise = 0.5 * 0.8 + 0.25 * (equivalent diameter of 600 um^2 / 100 um) + 0.25 * 1
    diameter = 2 * (600 / 3.141592653589793) ** 0.5
    assert course.promise == pytest.approx(0.4 + 0.25 * diameter / 100 + 0.25, abs=1e-6)
    assert course.is_hit
    assert course.ever_hit


def test_size_and_growth_terms_are_capped_and_never_negative() -> None:
    assert size_term(None) == 0.0
    assert size_term(3.141592653589793 * 50**2) == pytest.approx(1.0)  # 100 um across
    assert size_term(1e9) == 1.0
    assert growth_term(100.0, 50.0) == 0.0  # shrinking
    assert growth_term(100.0, 150.0) == 0.5
    assert growth_term(0.0, 10.0) == 1.0
    assert promise_score(0.0, None, 0.0, 0.0) == 0.0


def test_ranking_puts_hits_now_first_then_promise_then_plate_order() -> None:
    hit_small = drop_course([observation(1, True, 10.0, 0.6)])
    hit_large = drop_course([observation(1, True, 5000.0, 0.9)])
    was_hit = drop_course([observation(1, True, 5000.0, 0.99), observation(2, False, 0.0, 0.1)])
    never = drop_course([observation(1, False, 0.0, 0.3)])
    tie = drop_course([observation(1, True, 10.0, 0.6)])
    ranked = rank_by_promise([(4, never), (2, hit_small), (1, was_hit), (3, hit_large), (1, tie)])
    # hits now: by promise (0.6495 > 0.3089), ties in plate order; then the others by promise
    # (never a hit, P 0.3: 0.15; a hit that is not one now, P 0.1 and no crystal: 0.05)
    assert [course for _, course in ranked] == [hit_large, tie, hit_small, never, was_hit]
    assert [round(course.promise, 4) for _, course in ranked] == [
        0.6495,
        0.3089,
        0.3089,
        0.15,
        0.05,
    ]


def test_the_thresholds_file_round_trips_and_keeps_other_analysers(tmp_path: Path) -> None:
    path = tmp_path / "hits.json"
    chosen = HitThresholds(classifier_threshold=0.35, detector_score=0.75, combined_threshold=0.5)
    write_thresholds(path, "chimp", chosen, {"validation": "val.csv", "images": 12})
    write_thresholds(path, "baseline", HitThresholds(detector_min_count=2), {"images": 3})
    policy = load_policy("combined", path)
    assert policy.for_analyser("chimp") == chosen
    assert policy.for_analyser("baseline").detector_min_count == 2
    assert policy.for_analyser("other") == HitThresholds()
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["chosen"]["chimp"] == {"validation": "val.csv", "images": 12}


def test_a_bad_thresholds_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(ConfigError, match=r"none\.json does not exist"):
        load_policy("combined", missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "analysers": {"chimp": {"detector_score": 2}}}')
    with pytest.raises(ConfigError, match=r"analysers.chimp: detector_score must be within 0..1"):
        load_policy("combined", bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match='must be a JSON object with "version": 1'):
        load_policy("combined", bad)
