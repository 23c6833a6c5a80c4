"""What a model file is (``chimp-worker models info``): kind, architecture, classes, checksum.

A file is only described after it has been fully loaded into its architecture, so a file that
``models info`` accepts is one the worker can run; anything else is one ModelFileError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chimp_worker.detector_kinds import CLASSIFIER, detector_kind
from chimp_worker.errors import ModelFileError
from chimp_worker.models.checkpoints import file_kind, read_model_file
from chimp_worker.models.classifier import classifier_from_contents
from chimp_worker.models.detector import (
    DETECTOR_ARCHITECTURE,
    detector_from_contents,
)
from chimp_worker.models.preprocessing import DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH

__all__ = ["ExpectedKind", "ModelFileInfo", "describe_model_file"]

ExpectedKind = str  # "classifier" or a detector kind's name (``detector_kinds``)


@dataclass(frozen=True)
class ModelFileInfo:
    """A loadable model file, described."""

    path: Path
    role: str  # "classifier" or a detector kind's role, e.g. "vmxi_detector"
    architecture: str
    classes: tuple[str, ...]  # in the order of the model's outputs
    input_size: str
    layout: str  # how the weights are stored in the file
    parameters: int
    size_bytes: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "role": self.role,
            "architecture": self.architecture,
            "classes": list(self.classes),
            "input_size": self.input_size,
            "layout": self.layout,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }


def _prefixed(state: object) -> bool:
    return isinstance(state, Mapping) and any(str(key).startswith("module.") for key in state)


def describe_model_file(
    path: Path, expected: ExpectedKind | None = None, *, classifier_input_size: int = 512
) -> ModelFileInfo:
    """Load ``path`` and describe it; with ``expected``, refuse a file of another kind."""
    path = Path(path)
    if expected in (None, CLASSIFIER):
        role_name = expected or "model"
    else:
        role_name = detector_kind(expected).title
    contents = read_model_file(path, role_name)
    kind = file_kind(contents)
    if kind == "unknown":
        raise ModelFileError(
            f"{role_name} file {path} is neither a CHiMP classifier checkpoint (a dict with "
            "model_state_dict and class_names) nor a Mask R-CNN state_dict"
        )
    if expected == CLASSIFIER or (expected is None and kind == CLASSIFIER):
        loaded = classifier_from_contents(contents, path)
        loss = contents.get("loss_val") if isinstance(contents, Mapping) else None
        layout = "checkpoint dict (model_state_dict, model_struc_dict, class_names"
        layout += f", loss_val {float(loss):.4f})" if loss is not None else ")"
        if _prefixed(contents["model_state_dict"]):
            layout += "; DataParallel 'module.' prefixes stripped"
        return ModelFileInfo(
            path=path,
            role="classifier",
            architecture=f"timm {loaded.model_type} + two-layer head, avgmax pooling",
            classes=loaded.class_names,
            input_size=(
                f"{classifier_input_size} x {classifier_input_size} "
                "(configured: classifier_input_size; not stored in the file)"
            ),
            layout=layout,
            parameters=sum(p.numel() for p in loaded.model.parameters()),
            size_bytes=path.stat().st_size,
            sha256=loaded.sha256,
        )
    detector = detector_from_contents(contents, path, None, role_name, kind=expected)
    wrapped = isinstance(contents, Mapping) and "model_state_dict" in contents
    layout = "state_dict under model_state_dict" if wrapped else "raw state_dict"
    if _prefixed(contents["model_state_dict"] if wrapped else contents):
        layout += "; DataParallel 'module.' prefixes stripped"
    return ModelFileInfo(
        path=path,
        role=detector.kind.role,
        architecture=f"torchvision {DETECTOR_ARCHITECTURE} (v1), FastRCNN/MaskRCNN predictors",
        classes=detector.labels,
        input_size=(
            f"{DETECTOR_INPUT_HEIGHT} x {DETECTOR_INPUT_WIDTH} (H x W, resized + CLAHE), "
            "rescaled by torchvision to 800 on the short side"
        ),
        layout=layout,
        parameters=sum(p.numel() for p in detector.model.parameters()),
        size_bytes=path.stat().st_size,
        sha256=detector.sha256,
    )
