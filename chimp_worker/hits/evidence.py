"""What an ``ImageAnalysis`` says for hit calling: P(crystal) and the crystals that may count.

The same choice as the worker's time course (``ispyb.time_course``) makes from stored rows:
with two detectors, only the crystals of the one whose crystals become targets (VMXi before
XChem); a result without any detector has no crystal evidence at all (None, not empty).
"""

from __future__ import annotations

from chimp_worker.analysis import ImageAnalysis
from chimp_worker.detector_kinds import crystal_roles
from chimp_worker.hits.rules import ImageEvidence

CRYSTAL_ROLE_PREFERENCE = crystal_roles()  # the detector kinds' roles, VMXi before XChem
DETECTOR_ROLES = (*CRYSTAL_ROLE_PREFERENCE, "baseline")  # roles that find crystals


def evidence_from_analysis(analysis: ImageAnalysis) -> ImageEvidence:
    roles = {model.role for model in analysis.models}
    p_crystal = (analysis.probabilities or {}).get("crystals")
    if not roles & set(DETECTOR_ROLES):
        return ImageEvidence.of(p_crystal, None)
    role = next((r for r in CRYSTAL_ROLE_PREFERENCE if r in roles), None)
    crystals = [
        (detection.score, detection.mask_area)
        for detection in analysis.detections
        if detection.label == "crystal" and (role is None or detection.model_role in (role, None))
    ]
    return ImageEvidence.of(p_crystal, crystals)
