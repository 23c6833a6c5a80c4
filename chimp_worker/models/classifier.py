"""CHiMP Classifier v2: ConvNeXt-Tiny (timm) with the published two-layer head.

The checkpoint layout is the authors': a dict with ``model_state_dict``,
``model_struc_dict`` (``type`` = timm name, ``num_classes``, ``classes``),
``optimizer_state_dict``, ``loss_val`` (numpy float64) and ``class_names``. Class order is
always read from the file's ``class_names``, never assumed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.errors import ModelFileError
from chimp_worker.models.checkpoints import (
    file_kind,
    file_sha256,
    load_state_strict,
    read_model_file,
    strip_module_prefix,
)

__all__ = [
    "DEFAULT_CLASSIFIER_TYPE",
    "LoadedClassifier",
    "build_classifier",
    "canonical_class_name",
    "classifier_from_contents",
    "load_classifier",
    "save_classifier_checkpoint",
]

# The published checkpoint's timm name: a deprecated alias of convnext_tiny.fb_in22k_ft_in1k_384.
DEFAULT_CLASSIFIER_TYPE = "convnext_tiny_384_in22ft1k"
HEAD_HIDDEN = 512
HEAD_DROPOUT = 0.4


def build_classifier(num_classes: int, model_type: str = DEFAULT_CLASSIFIER_TYPE) -> nn.Module:
    """The classifier architecture with random weights, in eval mode; nothing is downloaded.

    ``head.fc`` is the paper's two-layer head: BatchNorm1d, Linear (no bias), ReLU, BatchNorm1d,
    Dropout(0.4), Linear (no bias); pooling is avgmax (mean of average and max pooling).
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mapping deprecated model name")
        model = timm.create_model(
            model_type, pretrained=False, num_classes=num_classes, global_pool="avgmax"
        )
    features = model.num_features  # every timm model sets it, as an int nn.Module cannot type
    if not isinstance(features, int):
        raise TypeError(f"timm model {model_type!r} has no integer num_features")
    model.get_submodule("head").fc = nn.Sequential(
        nn.BatchNorm1d(features),
        nn.Linear(features, HEAD_HIDDEN, bias=False),
        nn.ReLU(),
        nn.BatchNorm1d(HEAD_HIDDEN),
        nn.Dropout(HEAD_DROPOUT),
        nn.Linear(HEAD_HIDDEN, num_classes, bias=False),
    )
    return model.eval()


def save_classifier_checkpoint(
    model: nn.Module,
    class_names: Sequence[str],
    path: Path,
    model_type: str = DEFAULT_CLASSIFIER_TYPE,
    *,
    loss_val: float = 0.522,
    optimizer_state: Mapping[str, Any] | None = None,
    data_parallel: bool = False,
) -> Path:
    """Write a checkpoint in the published layout (used by training and by the tests).

    ``data_parallel`` writes ``module.``-prefixed keys, as a model wrapped in DataParallel does.
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if data_parallel:
        state = {f"module.{key}": value for key, value in state.items()}
    names = [str(name) for name in class_names]
    checkpoint = {
        "model_state_dict": state,
        "model_struc_dict": {
            "type": model_type,
            "pretrained": True,
            "num_classes": len(names),
            "classes": names,
            "global_pool": "avgmax",
        },
        "optimizer_state_dict": dict(optimizer_state or {}),
        "loss_val": np.float64(loss_val),
        "class_names": names,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def canonical_class_name(name: str) -> str | None:
    """The canonical CHiMP class for a name in a checkpoint ('Crystals' -> 'crystals')."""
    cleaned = name.strip().lower()
    return cleaned if cleaned in CLASS_NAMES else None


@dataclass(frozen=True, eq=False)
class LoadedClassifier:
    """A classifier ready for inference, with what identifies it in results."""

    model: nn.Module
    class_names: tuple[str, ...]  # canonical names, in the order of the model's outputs
    model_type: str
    path: Path
    sha256: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes) for a normalised (N, 3, S, S) batch."""
        return torch.softmax(self.model(batch).float(), dim=1)

    def as_mapping(self, row: torch.Tensor) -> dict[str, float]:
        """One image's probabilities by canonical class name (never by position)."""
        values = row.tolist()
        return {name: float(value) for name, value in zip(self.class_names, values, strict=True)}


def load_classifier(path: Path) -> LoadedClassifier:
    """Load a classifier checkpoint in the published format; ModelFileError when it is not one."""
    path = Path(path)
    return classifier_from_contents(read_model_file(path, "classifier"), path)


def classifier_from_contents(contents: Any, path: Path) -> LoadedClassifier:
    """``load_classifier`` for a file already read with ``read_model_file``."""
    kind = file_kind(contents)
    if kind == "detector":
        raise ModelFileError(
            f"classifier file {path} is a Mask R-CNN detector state_dict, not a classifier "
            "checkpoint; set it in detector_paths (vmxi_detector_path, xchem_detector_path) "
            "instead"
        )
    if kind != "classifier":
        raise ModelFileError(
            f"classifier file {path} is not a CHiMP classifier checkpoint: expected a dict with "
            "model_state_dict, model_struc_dict and class_names"
        )
    class_names = _checked_class_names(contents["class_names"], path)
    structure = contents.get("model_struc_dict") or {}
    model_type = DEFAULT_CLASSIFIER_TYPE
    if isinstance(structure, Mapping) and structure.get("type"):
        model_type = str(structure["type"])
    if not timm.is_model(model_type):
        raise ModelFileError(
            f"classifier file {path} names an architecture timm does not know: {model_type!r}"
        )
    state = strip_module_prefix(contents["model_state_dict"])
    final_weight = state.get("head.fc.5.weight")
    if final_weight is None:
        raise ModelFileError(
            f"classifier file {path} lacks the published two-layer head (no head.fc.5.weight)"
        )
    if final_weight.shape[0] != len(class_names):
        raise ModelFileError(
            f"classifier file {path} has {final_weight.shape[0]} outputs but "
            f"{len(class_names)} class_names {list(class_names)}"
        )
    model = build_classifier(len(class_names), model_type)
    load_state_strict(model, state, path, "classifier")
    return LoadedClassifier(
        model=model.eval(),
        class_names=class_names,
        model_type=model_type,
        path=path,
        sha256=file_sha256(path),
    )


def _checked_class_names(raw: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(name, str) for name in raw):
        raise ModelFileError(f"classifier file {path}: class_names must be a list of strings")
    canonical = [canonical_class_name(name) for name in raw]
    unknown = [name for name, mapped in zip(raw, canonical, strict=True) if mapped is None]
    if unknown:
        raise ModelFileError(
            f"classifier file {path} has classes {unknown} that are not CHiMP classes "
            f"{list(CLASS_NAMES)}"
        )
    if len(set(canonical)) != len(canonical):
        raise ModelFileError(f"classifier file {path} repeats a class in class_names {raw}")
    return tuple(name for name in canonical if name is not None)
