"""One call per ``chimp-worker train`` subcommand: read the data, split off validation when no
separate set is given, apply the settings (device, threads, preprocessing), train."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np

from chimp_worker.config import Settings
from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.coco import CocoDataset, load_coco
from chimp_worker.evaluate.runner import load_rows
from chimp_worker.train.classifier import ClassifierTrainingConfig, train_classifier
from chimp_worker.train.data import stratified_split
from chimp_worker.train.detector import DetectorTrainingConfig, train_detector
from chimp_worker.train.loop import TrainingReporter, TrainingResult


def split_coco(dataset: CocoDataset, fraction: float, seed: int) -> tuple[CocoDataset, CocoDataset]:
    """(train, validation) by image: ``fraction`` of the images, at least one, chosen from
    ``seed``; each part keeps only its images' annotations."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {fraction}")
    ids = sorted(int(image["id"]) for image in dataset.images)
    if len(ids) < 2:
        raise DatasetError("need at least 2 annotated images to hold one out; give --val")
    count = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    held = {int(i) for i in np.random.default_rng(seed).choice(ids, size=count, replace=False)}

    def part(keep: set[int]) -> CocoDataset:
        data = copy.deepcopy(dataset.data)
        data["images"] = [image for image in data["images"] if int(image["id"]) in keep]
        data["annotations"] = [a for a in data["annotations"] if int(a["image_id"]) in keep]
        return CocoDataset(data=data, image_root=dataset.image_root)

    return part(set(ids) - held), part(held)


def run_classifier_training(
    settings: Settings,
    train_csv: Path,
    config: ClassifierTrainingConfig,
    *,
    val_csv: Path | None = None,
    val_fraction: float = 0.2,
    label_map: str | None = None,
    image_root: Path | None = None,
    reporter: TrainingReporter | None = None,
) -> TrainingResult:
    """Train the classifier on a labelled CSV (validation: ``val_csv`` or a stratified split)."""
    from chimp_worker.models import configure_threads

    configure_threads(settings.torch_threads)
    rows = load_rows(train_csv, label_map, image_root=image_root)
    if val_csv is not None:
        val_rows = load_rows(val_csv, label_map, image_root=image_root)
        train_rows = rows
    else:
        train_rows, val_rows = stratified_split(rows, val_fraction, config.seed)
    config = replace(config, device=settings.device, max_pixels=settings.image_max_pixels)
    return train_classifier(train_rows, val_rows, config, reporter)


def run_detector_training(
    settings: Settings,
    train_annotations: Path,
    config: DetectorTrainingConfig,
    *,
    val_annotations: Path | None = None,
    val_fraction: float = 0.2,
    image_root: Path | None = None,
    reporter: TrainingReporter | None = None,
) -> TrainingResult:
    """Train a detector on COCO annotations (validation: ``val_annotations`` or a split)."""
    from chimp_worker.models import configure_threads

    configure_threads(settings.torch_threads)
    train = load_coco(train_annotations, image_root)
    if val_annotations is not None:
        val = load_coco(val_annotations, image_root)
    else:
        train, val = split_coco(train, val_fraction, config.seed)
    config = replace(
        config,
        device=settings.device,
        clahe_clip_limit=settings.clahe_clip_limit,
        mask_threshold=settings.mask_threshold,
        max_pixels=settings.image_max_pixels,
    )
    return train_detector(train, val, config, reporter)
