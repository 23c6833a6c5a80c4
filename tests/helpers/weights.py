"""Model files for tests: the seeded published-format files, cached between test sessions.

``make_classifier_file`` / ``make_detector_file`` live in ``chimp_worker.models.seeded`` (the
benchmark and the demo need them too). Other test packages share the files tests/models
builds with ``cached_weight_file(request.config.cache.mkdir("chimp-model-weights"),
"detector", flavour="xchem", seed=0)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import timm
import torch
import torchvision

from chimp_worker.models import seeded
from chimp_worker.models.seeded import make_classifier_file, make_detector_file

__all__ = ["cached_weight_file", "make_classifier_file", "make_detector_file"]


def cached_weight_file(directory: Path, kind: str, **params: object) -> Path:
    """A weight file built once and reused by later test sessions on this machine.

    ``kind`` is "classifier" or "detector"; ``params`` go to the matching ``make_*`` function.
    The file name carries a hash of the parameters, the seeded module's source and the torch,
    torchvision and timm versions, so any change that could alter the weights builds afresh.
    Written under a temporary name and renamed, so concurrent sessions never read half a file.
    """
    makers = {"classifier": make_classifier_file, "detector": make_detector_file}
    if kind not in makers:
        raise ValueError(f"kind must be classifier or detector, got {kind!r}")
    key = hashlib.sha256()
    key.update(Path(seeded.__file__).read_bytes())
    key.update(f"{torch.__version__} {torchvision.__version__} {timm.__version__}".encode())
    key.update(repr(sorted((name, repr(value)) for name, value in params.items())).encode())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{key.hexdigest()[:16]}.pt"
    if not path.exists():
        partial = directory / f".{path.name}.{os.getpid()}.partial"
        makers[kind](partial, **params)  # type: ignore[operator]
        partial.replace(path)
    return path
