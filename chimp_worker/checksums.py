"""The model-file checksum, torch-free: results record it, replay compares against it.

One definition for both sides: ``models`` hashes the weights it loads, and replay hashes the
configured files to find stale results without importing torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; identifies the model version in results."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
