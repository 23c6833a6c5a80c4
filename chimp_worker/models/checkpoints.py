"""Reading model files safely, in the formats the CHiMP authors published.

``torch.load(weights_only=True)`` never runs code from the file; the published classifier
holds a numpy float64 (``loss_val``), so exactly the numpy globals a scalar or array needs are
allow-listed -- under both their numpy 2 names and the numpy 1 names (``numpy.core...``) an
older file carries. Every failure becomes one ``ModelFileError`` that names the file and says
what is wrong with it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from chimp_worker.checksums import file_sha256
from chimp_worker.errors import ModelFileError

__all__ = [
    "FileKind",
    "file_kind",
    "file_sha256",
    "load_state_strict",
    "read_model_file",
    "strip_module_prefix",
]

FileKind = Literal["classifier", "detector", "unknown"]


def _numpy_safe_globals() -> list[Any]:
    """numpy objects a pickled scalar or array refers to, under old and new module names."""
    from numpy._core import multiarray

    entries: list[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        entries.append(function)
        entries.append((function, f"numpy.core.multiarray.{name}"))
    for dtype_class_name in dir(np.dtypes):
        dtype_class = getattr(np.dtypes, dtype_class_name)
        if isinstance(dtype_class, type) and issubclass(dtype_class, np.dtype):
            entries.append(dtype_class)
    return entries


def read_model_file(path: Path, role: str) -> Any:
    """The unpickled contents of a torch model file, tensors on the CPU.

    ``role`` ("classifier", "VMXi detector"...) only makes the error messages specific.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{role} file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"{role} file {path} is not a regular file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{role} file {path} is empty")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise ModelFileError(
                f"{role} file {path} contains Python objects other than tensors and numpy "
                "numbers; refusing to unpickle it (it could run code). Re-save it with "
                "torch.save(state_dict) or the published checkpoint layout."
            ) from None
        raise ModelFileError(
            f"{role} file {path} is truncated or not a torch file ({_short(exc)})"
        ) from None
    except Exception as exc:  # garbage bytes make the unpickler fail in arbitrary ways
        raise ModelFileError(
            f"{role} file {path} is truncated or not a torch file ({_short(exc)})"
        ) from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix DataParallel / DistributedDataParallel add to every key."""
    stripped: dict[str, Any] = {}
    for key, value in state_dict.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module.") :]
        stripped[name] = value
    return stripped


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(item, torch.Tensor) for item in value.values())
    )


def detector_state_dict(contents: Any) -> dict[str, torch.Tensor] | None:
    """The Mask R-CNN weights in a file: a raw state_dict or one under ``model_state_dict``."""
    candidate = contents
    if isinstance(contents, Mapping) and "model_state_dict" in contents:
        candidate = contents["model_state_dict"]
    if not _is_state_dict(candidate):
        return None
    state = strip_module_prefix(candidate)
    if not any(key.startswith("roi_heads.box_predictor.") for key in state):
        return None
    return state


def file_kind(contents: Any) -> FileKind:
    """What a model file holds, judged from its keys (for clear 'wrong kind' messages)."""
    if isinstance(contents, Mapping) and "class_names" in contents:
        state = contents.get("model_state_dict")
        if isinstance(state, Mapping) and any(
            str(key).removeprefix("module.").startswith("head.fc.") for key in state
        ):
            return "classifier"
    if detector_state_dict(contents) is not None:
        return "detector"
    return "unknown"


def load_state_strict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, role: str
) -> None:
    """Strict load; a shape or key mismatch becomes a ModelFileError that says which."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"wrong shapes: {'; '.join(wrong_shape[:3])}")
    if problems:
        raise ModelFileError(
            f"{role} file {path} does not fit the architecture: " + ", ".join(problems)
        )
    model.load_state_dict(state, strict=True)
