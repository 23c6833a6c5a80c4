"""Damaged image files, for testing that every bad image ends as a specific recorded failure.

Each fault is what really turns up in a facility's image store, with the failure reason the
worker must record for it (``errors.Image*Error.reason``).
"""

from __future__ import annotations

import numpy as np

# fault name -> the reason the worker records for such an image
FILE_FAULTS: dict[str, str] = {
    "missing": "image_missing",  # the row exists, the file was never written
    "truncated": "image_truncated",  # the imager stopped half-way through writing
    "corrupt": "image_corrupt",  # a JPEG header followed by garbage
    "empty": "image_corrupt",  # a zero-byte file
    "not_image": "image_unsupported",  # something else saved under the image's name
}

_KEEP_HEADER_BYTES = 64


def damage(data: bytes, fault: str, seed: int = 0) -> bytes | None:
    """``data`` damaged as ``fault`` says; None means "no file at all" (``missing``)."""
    if fault == "missing":
        return None
    if fault == "truncated":
        return data[: len(data) // 2]
    if fault == "corrupt":
        return corrupt(data, seed)
    if fault == "empty":
        return b""
    if fault == "not_image":
        return b"<html><body>502 Bad Gateway</body></html>\n"
    raise ValueError(f"unknown image fault {fault!r}; expected one of {sorted(FILE_FAULTS)}")


def corrupt(data: bytes, seed: int = 0) -> bytes:
    """Keep the first 64 bytes (the JPEG start and part of its first table), then random bytes.

    0xFF is left out of the noise, so the next segment marker can never appear by chance and
    every decoder sees a broken header rather than a file that merely ends early.
    """
    rng = np.random.default_rng([seed, len(data)])
    noise = rng.integers(0, 255, max(0, len(data) - _KEEP_HEADER_BYTES), dtype=np.uint8)
    return data[:_KEEP_HEADER_BYTES] + noise.tobytes()
