"""What each image of some inspections says for hit calling, read from the stored results.

P(crystal) is the ``crystal`` row of ``BLSampleImage_has_AutoScoreClass`` under the schema the
image was scored in; the crystals are its ``chimp_detection`` rows labelled ``crystal`` (with
two detectors, only the crystal-target detector's: ``chimp_detection.modelRole``); the model
roles behind the result say whether a detector ran at all. The same choices as
``hits.evidence`` makes from an ``ImageAnalysis``. Used by ``ispyb.time_course``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chimp_worker.hits.evidence import CRYSTAL_ROLE_PREFERENCE, DETECTOR_ROLES
from chimp_worker.hits.policy import HitPolicy
from chimp_worker.hits.rules import ImageEvidence, call_hit
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpDetection, ChimpImageModel, ChimpImageResult

CRYSTAL_SCORE_CLASS = "crystal"  # ISPyB's class name for P(crystal) in every schema we write
_DIGITS = 6  # values are rounded before storing, so a recomputation compares equal


@dataclass(frozen=True)
class Observed:
    """One drop in one inspection: its image and the chimp_drop_inspection result columns."""

    blSampleId: int
    containerInspectionId: int
    blSampleImageId: int
    analyser: str | None
    values: dict[str, Any]  # the chimp_drop_inspection columns that hold results


def observe(session: Session, inspection_ids: Sequence[int], policy: HitPolicy) -> list[Observed]:
    """One verdict per drop for each inspection: its latest done image, judged by the rule."""
    if not inspection_ids:
        return []
    si = t.BLSampleImage
    images = session.execute(
        select(
            si.blSampleImageId,
            si.blSampleId,
            si.containerInspectionId,
            si.micronsPerPixelX,
            si.micronsPerPixelY,
            ChimpImageResult.analyser,
            ChimpImageResult.schemaName,
        )
        .join(ChimpImageResult, ChimpImageResult.blSampleImageId == si.blSampleImageId)
        .where(si.containerInspectionId.in_(inspection_ids))
        .where(ChimpImageResult.state == "done")
        .order_by(si.blSampleImageId)
    ).all()
    chosen: dict[tuple[int, int], Any] = {}
    for row in images:  # several images of a drop in one inspection: the latest, as SynchWeb
        chosen[(int(row.blSampleId), int(row.containerInspectionId))] = row
    probabilities = _crystal_probabilities(session, inspection_ids)
    crystals, roles = _crystals_and_roles(session, inspection_ids)
    observed = []
    for (sample_id, inspection_id), row in sorted(chosen.items()):
        image_id = int(row.blSampleImageId)
        image_roles = roles.get(image_id, set())
        evidence = ImageEvidence.of(
            probabilities.get((image_id, row.schemaName)),
            _counted_role_crystals(crystals.get(image_id, []), image_roles)
            if image_roles & set(DETECTOR_ROLES)
            else None,
        )
        verdict = call_hit(evidence, policy.for_analyser(row.analyser), policy.rule)
        mpp = (
            float(row.micronsPerPixelX) * float(row.micronsPerPixelY)
            if row.micronsPerPixelX and row.micronsPerPixelY
            else None
        )
        observed.append(
            Observed(
                sample_id,
                inspection_id,
                image_id,
                row.analyser,
                {
                    "pCrystal": _round(evidence.p_crystal),
                    "crystalCount": verdict.crystal_count,
                    "crystalAreaPx": verdict.crystal_area_px,
                    "crystalAreaUm2": None
                    if mpp is None
                    else _round(verdict.crystal_area_px * mpp),
                    "largestCrystalUm2": None
                    if mpp is None
                    else _round(verdict.largest_crystal_px * mpp),
                    "bestCrystalScore": _round(verdict.best_crystal_score),
                    "hitScore": _round(verdict.score),
                    "isHit": verdict.hit,
                    "hitRule": verdict.rule,
                },
            )
        )
    return observed


def _crystal_probabilities(
    session: Session, inspection_ids: Sequence[int]
) -> dict[tuple[int, str], float]:
    """(image id, schema name) -> P(crystal), for the images of these inspections."""
    h, cls, sch = (
        t.BLSampleImageHasAutoScoreClass,
        t.BLSampleImageAutoScoreClass,
        t.BLSampleImageAutoScoreSchema,
    )
    rows = session.execute(
        select(h.blSampleImageId, sch.schemaName, h.probability)
        .join(t.BLSampleImage, t.BLSampleImage.blSampleImageId == h.blSampleImageId)
        .join(cls, cls.blSampleImageAutoScoreClassId == h.blSampleImageAutoScoreClassId)
        .join(sch, sch.blSampleImageAutoScoreSchemaId == cls.blSampleImageAutoScoreSchemaId)
        .where(t.BLSampleImage.containerInspectionId.in_(inspection_ids))
        .where(cls.scoreClass == CRYSTAL_SCORE_CLASS)
    ).all()
    return {(int(image_id), schema): float(p) for image_id, schema, p in rows if p is not None}


def _crystals_and_roles(
    session: Session, inspection_ids: Sequence[int]
) -> tuple[dict[int, list[tuple[float, int, str | None]]], dict[int, set[str]]]:
    """Per image: its crystal detections (score, mask area, model role) and the model roles
    behind its result."""
    si = t.BLSampleImage
    crystals: dict[int, list[tuple[float, int, str | None]]] = defaultdict(list)
    for image_id, score, area, role in session.execute(
        select(
            ChimpDetection.blSampleImageId,
            ChimpDetection.score,
            ChimpDetection.maskArea,
            ChimpDetection.modelRole,
        )
        .join(si, si.blSampleImageId == ChimpDetection.blSampleImageId)
        .where(si.containerInspectionId.in_(inspection_ids))
        .where(ChimpDetection.label == "crystal")
    ):
        crystals[int(image_id)].append((float(score), int(area), role))
    roles: dict[int, set[str]] = defaultdict(set)
    for image_id, role in session.execute(
        select(ChimpImageModel.blSampleImageId, ChimpImageModel.role)
        .join(si, si.blSampleImageId == ChimpImageModel.blSampleImageId)
        .where(si.containerInspectionId.in_(inspection_ids))
    ):
        roles[int(image_id)].add(role)
    return crystals, roles


def _counted_role_crystals(
    crystals: Iterable[tuple[float, int, str | None]], roles: set[str]
) -> list[tuple[float, int]]:
    """The crystals of the detector whose crystals are the targets (all, when unknown)."""
    role = next((r for r in CRYSTAL_ROLE_PREFERENCE if r in roles), None)
    return [
        (score, area)
        for score, area, found_by in crystals
        if role is None or found_by in (role, None)
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _DIGITS)
