"""Export mock-imager micrographs as labelled data sets, so evaluate and train run anywhere.

One call writes ``images/*.jpg``, ``labels.csv`` (path, label: the scene's outcome, one of the
classifier's four classes) and ``annotations.json`` (COCO instances: crystal and, for XChem or
on request, drop polygons traced from the renderer's exact masks). Outcomes are balanced by
default (cycled through the four classes) so small sets still hold every class.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.evaluate.datasets import write_labelled_csv
from chimp_worker.mock_imager.synthetic import (
    GroundTruth,
    MaskRegion,
    encode_jpeg,
    render_micrograph,
)

LABELS_FILE = "labels.csv"
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
_TRACE_SCALE = 4


@dataclass(frozen=True)
class MockDataset:
    """Where an exported set lies and what it holds."""

    root: Path
    labels_csv: Path
    annotations: Path
    images: int
    per_class: dict[str, int]
    crystals: int


def mask_to_polygons(mask: np.ndarray, x0: int = 0, y0: int = 0) -> list[list[float]]:
    """COCO polygons [x1, y1, x2, y2, ...] tracing each outer contour of a bool mask.

    Pixel (col, row) covers the square [col, col + 1) x [row, row + 1), as COCO rasterises.
    Contours traced through boundary pixel *centres* would cut every edge pixel in half (a
    20-pixel crystal loses a third of its area), so the mask is traced at 4x and its vertices
    mapped back, giving outlines 1/8 pixel inside the true edge: rasterised again they give the
    mask back. ``x0``/``y0`` offset a cropped mask into the image.
    """
    scale = _TRACE_SCALE
    padded = np.pad(mask.astype(np.uint8), 1)
    upsampled = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST_EXACT)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons: list[list[float]] = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(float) + 0.5) / scale - 1.0 + (x0, y0)
        if len(points) < 3:  # cannot happen at 4x, kept as a guard for degenerate input
            continue
        polygons.append([round(float(v), 3) for v in points.reshape(-1)])
    return polygons


def _region_annotation(region: MaskRegion, category_id: int) -> dict[str, Any] | None:
    if region.area == 0:
        return None
    left, top, right, bottom = region.box
    return {
        "category_id": category_id,
        "bbox": [left, top, right - left + 1, bottom - top + 1],
        "area": region.area,
        "iscrowd": 0,
        "segmentation": mask_to_polygons(region.crop, region.x0, region.y0),
    }


def _drop_region(truth: GroundTruth) -> MaskRegion:
    mask = truth.drop_mask
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return MaskRegion(0, 0, np.zeros((1, 1), dtype=bool))
    top, left = int(rows.min()), int(cols.min())
    return MaskRegion(left, top, mask[top : rows.max() + 1, left : cols.max() + 1])


def export_mock_dataset(
    root: Path,
    *,
    flavour: str = "vmxi",
    count: int = 40,
    seed: int = 0,
    size: tuple[int, int] | None = (320, 256),
    outcomes: Sequence[str] | None = None,
    with_drops: bool | None = None,
) -> MockDataset:
    """Render ``count`` micrographs into ``root`` with CSV labels and COCO annotations.

    ``size`` is (width, height); None renders the imager's native size. ``outcomes`` is the
    cycle of classes to draw (default: all four, balanced). Image n uses seed ``seed + n``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    cycle = tuple(outcomes) if outcomes else CLASS_NAMES
    unknown = [name for name in cycle if name not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown outcomes {unknown}; expected among {CLASS_NAMES}")
    drops = flavour == "xchem" if with_drops is None else with_drops
    names = ("drop", "crystal") if drops else ("crystal",)
    ids = {name: number for number, name in enumerate(names, start=1)}
    categories = [{"id": number, "name": name} for name, number in ids.items()]
    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    labels: list[tuple[str, str]] = []
    for number in range(count):
        outcome = cycle[number % len(cycle)]
        pixels, truth = render_micrograph(flavour, seed + number, outcome, size=size)
        name = f"{IMAGES_DIR}/{number + 1:05d}.jpg"
        (root / name).write_bytes(encode_jpeg(pixels))
        image_id = number + 1
        images.append(
            {"id": image_id, "file_name": name, "width": truth.width, "height": truth.height}
        )
        labels.append((name, truth.outcome))
        regions = [(crystal.region, ids["crystal"]) for crystal in truth.crystals]
        if drops:
            regions.insert(0, (_drop_region(truth), ids["drop"]))
        for region, category_id in regions:
            annotation = _region_annotation(region, category_id)
            if annotation is not None:
                annotation.update(id=len(annotations) + 1, image_id=image_id)
                annotations.append(annotation)
    write_labelled_csv(root / LABELS_FILE, labels)
    coco = {
        "info": {"description": f"chimp-worker mock-imager {flavour} set, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / ANNOTATIONS_FILE).write_text(json.dumps(coco))
    return MockDataset(
        root=root,
        labels_csv=root / LABELS_FILE,
        annotations=root / ANNOTATIONS_FILE,
        images=count,
        per_class=dict(Counter(label for _, label in labels)),
        crystals=sum(1 for a in annotations if a["category_id"] == ids["crystal"]),
    )
