"""Hits: per-image verdicts from both models, each drop's time course, ranking by promise.

``rules`` decides hit or no hit for one image, ``course`` summarises a drop over the plate's
inspections, ``policy`` holds the rule and thresholds in force (and their file), ``choose``
picks thresholds on a validation split. All pure; the database side is
``chimp_worker.ispyb.time_course``.
"""

from chimp_worker.hits.course import DropCourse, Observation, drop_course, rank_by_promise
from chimp_worker.hits.policy import HitPolicy, load_policy, write_thresholds
from chimp_worker.hits.rules import (
    HIT_RULES,
    CrystalEvidence,
    HitRule,
    HitThresholds,
    HitVerdict,
    ImageEvidence,
    call_hit,
)

__all__ = [
    "HIT_RULES",
    "CrystalEvidence",
    "DropCourse",
    "HitPolicy",
    "HitRule",
    "HitThresholds",
    "HitVerdict",
    "ImageEvidence",
    "Observation",
    "call_hit",
    "drop_course",
    "load_policy",
    "rank_by_promise",
    "write_thresholds",
]
