"""Running the models on image files (``chimp-worker analyse``), and results as plain data.

A bad image never stops the others: each file yields either an analysis or the specific
``ImageError`` that explains why it could not be used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chimp_worker.analysis import Analyser, DecodedImage, ImageAnalysis, ispyb_class
from chimp_worker.errors import ImageError, ImageMissingError

__all__ = ["FileAnalysis", "analyse_files", "analysis_as_dict"]


@dataclass(frozen=True, eq=False)
class FileAnalysis:
    """One file's outcome: ``analysis`` and ``image``, or ``error``."""

    path: Path
    image: DecodedImage | None = None
    analysis: ImageAnalysis | None = None
    error: ImageError | None = None


def _read(path: Path, max_pixels: int) -> DecodedImage:
    from chimp_worker.images import decode_image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageMissingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageMissingError(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageMissingError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, str(path), max_pixels)


def analyse_files(
    paths: Sequence[Path], analyser: Analyser, *, max_pixels: int, batch_size: int = 4
) -> Iterator[FileAnalysis]:
    """Decode and analyse files in batches, yielding each file's outcome in order."""
    for start in range(0, len(paths), batch_size):
        outcomes: list[FileAnalysis] = []
        for path in paths[start : start + batch_size]:
            try:
                outcomes.append(FileAnalysis(Path(path), image=_read(Path(path), max_pixels)))
            except ImageError as exc:
                outcomes.append(FileAnalysis(Path(path), error=exc))
        decoded = [outcome.image for outcome in outcomes if outcome.image is not None]
        analyses = iter(analyser.analyse(decoded))
        for outcome in outcomes:
            if outcome.image is None:
                yield outcome
            else:
                yield FileAnalysis(outcome.path, image=outcome.image, analysis=next(analyses))


def _mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding (pycocotools), the compact form COCO tools read."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = encoded["counts"]  # bytes from encode; the stubs allow str (as in decoded JSON)
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [int(v) for v in encoded["size"]], "counts": text}


def analysis_as_dict(analysis: ImageAnalysis, *, include_masks: bool = True) -> dict[str, Any]:
    """Everything in an analysis as JSON-ready data; masks as COCO RLE, (x, y) pixels.

    ``mask_rle`` is a detection's mask at the original size, ``model_mask_rle`` at the
    detector's input size; ``target_rule`` says which one the targets were computed on.
    """
    detections = []
    for detection in analysis.detections:
        item: dict[str, Any] = {
            "label": detection.label,
            "model_role": detection.model_role,
            "score": detection.score,
            "box_xyxy": list(detection.box),
            "mask_area": detection.mask_area,
            "centroid_xy": list(detection.centroid) if detection.centroid else None,
        }
        if include_masks and detection.mask is not None:
            item["mask_rle"] = _mask_rle(detection.mask.full())
        if include_masks and detection.model_mask is not None:
            # Where the published rule computes targets: the detector's 1352 x 1688 input.
            item["model_mask_rle"] = _mask_rle(detection.model_mask.full())
        detections.append(item)
    dispense = analysis.dispense
    return {
        "analyser": analysis.analyser,
        "schema": analysis.schema_name,
        "models": [
            {"role": ref.role, "name": ref.name, "sha256": ref.sha256} for ref in analysis.models
        ],
        "width": analysis.width,
        "height": analysis.height,
        "target_rule": analysis.target_rule,
        # ISPyB's class names, as in the database and SynchWeb (analysis.ISPYB_SCORE_CLASS)
        "probabilities": {ispyb_class(name): p for name, p in analysis.probabilities.items()}
        if analysis.probabilities
        else None,
        "top_class": ispyb_class(analysis.top_class),
        "detections": detections,
        "crystal_targets": [
            {"x": t.x, "y": t.y, "score": t.score, "detection_index": t.detection_index}
            for t in analysis.crystal_targets
        ],
        "dispense": None
        if dispense is None
        else {
            "status": dispense.status.value,
            "x": dispense.x,
            "y": dispense.y,
            "clearance_px": dispense.clearance_px,
            "drops_seen": dispense.drops_seen,
        },
        "timings_ms": {name: round(value, 3) for name, value in analysis.timings_ms.items()},
    }
