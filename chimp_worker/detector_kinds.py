"""The kinds of CHiMP detector, as data: adding a detector kind is one ``DetectorKind`` here.

Everything else reads this registry: the settings (``detector_paths``, keyed by kind name),
the analyser (which detector's crystals become targets, which one's drops place the dispense
point), replay's model checksums, ``models info``, evaluation, training, overlays and the
seeded test weights. Torch-free, so the settings and replay can import it.

A detector file holds no kind, only its number of classes: a file loaded without naming its
kind is taken as the first kind here with that many classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chimp_worker.config import Settings

__all__ = [
    "CLASSIFIER",
    "DETECTOR_KINDS",
    "DetectorKind",
    "ModelFile",
    "configured_model_files",
    "crystal_role",
    "crystal_roles",
    "detector_kind",
    "drop_role",
    "kind_for_classes",
    "kind_of_role",
]

CLASSIFIER = "classifier"  # the classifier's role and kind, beside the detector kinds


@dataclass(frozen=True)
class DetectorKind:
    """One kind of detector: what it finds and how the settings and results name it."""

    name: str  # key in ``detector_paths``, ``--flavour`` / ``--kind`` value: "vmxi"
    title: str  # in messages: "VMXi detector"
    labels: tuple[str, ...]  # class names in the model's output order, background first
    alias_setting: str | None = None  # the older flat setting, e.g. "vmxi_detector_path"

    @property
    def role(self) -> str:
        """How results name it (``ModelRef.role``, ``Detection.model_role``)."""
        return f"{self.name}_detector"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def supplies_crystals(self) -> bool:
        """Its crystals can become crystal targets."""
        return "crystal" in self.labels

    @property
    def supplies_drops(self) -> bool:
        """Its drops place the dispense point (its crystals, if any, are kept clear of)."""
        return "drop" in self.labels


# In order of preference: with several detectors, crystal targets come from the first kind
# here that supplies crystals, the dispense point from the first that supplies drops.
DETECTOR_KINDS: dict[str, DetectorKind] = {
    kind.name: kind
    for kind in (
        DetectorKind("vmxi", "VMXi detector", ("background", "crystal"), "vmxi_detector_path"),
        DetectorKind(
            "xchem", "XChem detector", ("background", "drop", "crystal"), "xchem_detector_path"
        ),
    )
}


def detector_kind(name: str) -> DetectorKind:
    """The kind called ``name``; ValueError naming the known kinds otherwise."""
    try:
        return DETECTOR_KINDS[name]
    except KeyError:
        known = ", ".join(DETECTOR_KINDS)
        raise ValueError(f"unknown detector kind {name!r} (known: {known})") from None


def kind_for_classes(num_classes: int) -> DetectorKind:
    """The first kind with ``num_classes`` classes (a file's kind when none is named)."""
    for kind in DETECTOR_KINDS.values():
        if kind.num_classes == num_classes:
            return kind
    known = ", ".join(f"{k.num_classes} ({k.title})" for k in DETECTOR_KINDS.values())
    raise ValueError(f"a CHiMP detector has {known} classes, not {num_classes}")


def kind_of_role(role: str) -> DetectorKind | None:
    """The kind whose results carry ``role``; None for the classifier, the baseline..."""
    return next((kind for kind in DETECTOR_KINDS.values() if kind.role == role), None)


def crystal_roles() -> tuple[str, ...]:
    """Roles of the kinds that supply crystals, most preferred first."""
    return tuple(kind.role for kind in DETECTOR_KINDS.values() if kind.supplies_crystals)


def crystal_role(roles: Iterable[str]) -> str | None:
    """Of the detector ``roles`` present, the one whose crystals become targets."""
    present = set(roles)
    return next((role for role in crystal_roles() if role in present), None)


def drop_role(roles: Iterable[str]) -> str | None:
    """Of the detector ``roles`` present, the one whose drops place the dispense point."""
    present = set(roles)
    return next(
        (k.role for k in DETECTOR_KINDS.values() if k.supplies_drops and k.role in present), None
    )


@dataclass(frozen=True)
class ModelFile:
    """One configured model file."""

    role: str  # "classifier" or a detector kind's role
    kind: str  # "classifier" or a detector kind's name
    path: Path


def configured_model_files(settings: Settings) -> list[ModelFile]:
    """Every model file the settings name: the classifier, then the detectors in registry
    order. The one list replay's checksums, ``models info`` and the analyser agree on."""
    files = []
    if settings.classifier_path is not None:
        files.append(ModelFile(CLASSIFIER, CLASSIFIER, Path(settings.classifier_path)))
    for kind in DETECTOR_KINDS.values():
        path = settings.detector_paths.get(kind.name)
        if path is not None:
            files.append(ModelFile(kind.role, kind.name, Path(path)))
    return files
