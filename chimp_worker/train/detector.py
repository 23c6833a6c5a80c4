"""Fine-tune a CHiMP Mask R-CNN detector on COCO-annotated local images (paper 3.2.3-3.2.4).

AdamW with a one-cycle learning rate, the paper's augmentations (flips, rotations, blur,
sharpening, brightness and contrast), the worker's own preprocessing (1688 x 1352, CLAHE,
min-max scaling); after each epoch the model is scored on the validation set with COCO mAP
(pycocotools, through the worker's ``ChimpAnalyser``) and written as a raw state_dict -- the
published format -- only when the mAP improved; early stopping after ``patience`` epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN

from chimp_worker.detector_kinds import DETECTOR_KINDS, DetectorKind, detector_kind
from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.coco import CocoDataset, IouType
from chimp_worker.evaluate.detector import MAP_SCORE_THRESHOLD, evaluate_detector
from chimp_worker.log import get_logger
from chimp_worker.models import (
    ChimpAnalyser,
    LoadedDetector,
    build_detector,
    load_detector,
    resolve_device,
    save_detector_state_dict,
)
from chimp_worker.models.analyser import AnalysisOptions
from chimp_worker.train.augment import DetectorAugment
from chimp_worker.train.data import DetectorImages, detector_samples
from chimp_worker.train.loop import (
    EpochTracker,
    SilentReporter,
    TrainingReporter,
    TrainingResult,
    one_cycle,
    seed_everything,
    train_epoch,
    write_atomically,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class DetectorTrainingConfig:
    """How to train a detector; defaults follow the paper (batch 4, one-cycle AdamW)."""

    output: Path
    init: Path | None = None  # a published-format state_dict; None: random weights
    flavour: str | None = None  # a detector kind (``detector_kinds``); required without init
    epochs: int = 20
    batch_size: int = 4
    max_lr: float = 2e-4  # a one-cycle peak of 2e-4 averages about the paper's 1e-4
    weight_decay: float = 0.01
    patience: int = 5
    metric: IouType = "bbox"  # AP at IoU 0.5:0.95, mean over categories
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    # torchvision's internal resize (800 / 1333 by default, as the published models ran);
    # smaller values are for quick experiments and tests only.
    min_size: int | None = None
    max_size: int | None = None
    clahe_clip_limit: float = 2.0
    mask_threshold: float = 0.5
    max_detections: int = 100
    max_pixels: int = 40_000_000


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _build(config: DetectorTrainingConfig) -> tuple[MaskRCNN, DetectorKind]:
    if config.init is not None:
        loaded = load_detector(config.init)
        if config.flavour and detector_kind(config.flavour).num_classes != loaded.num_classes:
            raise DatasetError(
                f"{config.init} is a {loaded.flavour} detector, not {config.flavour}"
            )
        kind = detector_kind(config.flavour) if config.flavour else loaded.kind
        return loaded.model, kind
    if config.flavour is None:
        known = " or ".join(DETECTOR_KINDS)
        raise DatasetError(f"training from scratch needs a flavour: {known}")
    kind = detector_kind(config.flavour)
    return build_detector(kind.num_classes), kind


def train_detector(
    train: CocoDataset,
    val: CocoDataset,
    config: DetectorTrainingConfig,
    reporter: TrainingReporter | None = None,
) -> TrainingResult:
    """Train, score mAP on ``val`` after each epoch, write the best model to ``config.output``."""
    reporter = reporter or SilentReporter()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model, kind = _build(config)
    if config.min_size is not None:
        model.transform.min_size = (int(config.min_size),)
    if config.max_size is not None:
        model.transform.max_size = int(config.max_size)
    # COCOeval keeps the top max_detections per image; pasting more full-size masks is waste
    model.roi_heads.detections_per_img = int(config.max_detections)
    model.to(device)
    labels = kind.labels
    flavour = kind.name
    samples, skipped = detector_samples(train, labels)
    if skipped:
        log.info("train.annotations_left_out", categories=skipped, flavour=flavour)
    augment = DetectorAugment() if config.augment else None
    dataset = DetectorImages(
        train,
        samples,
        augment=augment,
        clahe_clip_limit=config.clahe_clip_limit,
        seed=config.seed,
        max_pixels=config.max_pixels,
    )
    loader = DataLoader(
        dataset,
        batch_size=min(config.batch_size, len(dataset)),
        shuffle=True,
        num_workers=config.num_workers,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    loaded = LoadedDetector(
        model=model, num_classes=kind.num_classes, path=config.output, sha256="", kind_name=flavour
    )
    analyser = ChimpAnalyser(
        detectors={flavour: loaded},
        options=AnalysisOptions(
            score_threshold=MAP_SCORE_THRESHOLD,
            mask_threshold=config.mask_threshold,
            clahe_clip_limit=config.clahe_clip_limit,
            batch_size=1,
            fold_batchnorm=False,  # the model is still training and is saved as published
        ),
        device=device,
    )
    categories = [name for name in val.categories if name in labels]
    if not categories:
        raise DatasetError(
            f"validation categories {list(val.categories)} include no detector class {labels}"
        )

    def validate() -> tuple[float, dict[str, Any]]:
        model.eval()
        result = evaluate_detector(
            analyser,
            name=str(config.output),
            test_set="validation",
            coco=val,
            categories=categories,
            iou_types=(config.metric,),
            max_detections=config.max_detections,
            max_pixels=config.max_pixels,
            batch_size=1,
        )
        assert result.coco is not None  # scored on the COCO set ``val``
        scores = result.coco.score(config.metric)
        return float(scores.ap or 0.0), result.as_dict()

    def save() -> None:
        write_atomically(config.output, lambda path: save_detector_state_dict(model, path))

    def loss_of(batch: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]) -> torch.Tensor:
        images = [image.to(device) for image in batch[0]]
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch[1]]
        return sum(model(images, targets).values())

    started = time.perf_counter()
    start_metric, best_scores = validate()
    tracker = EpochTracker(config.patience, reporter, start_metric)
    save()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser, schedule = one_cycle(
        parameters,
        max_lr=config.max_lr,
        weight_decay=config.weight_decay,
        epochs=config.epochs,
        steps_per_epoch=len(loader),
    )
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        dataset.set_epoch(epoch)
        reporter.start_epoch(epoch, config.epochs, "all", len(loader))
        train_loss = train_epoch(model, loader, loss_of, optimiser, schedule, reporter)
        metric, scores = validate()
        if tracker.end_epoch(
            epoch,
            "all",
            train_loss=train_loss,
            val_loss=None,
            metric=metric,
            learning_rate=float(schedule.get_last_lr()[0]),  # typed float | Tensor
            started=epoch_started,
            on_improved=save,
        ):
            best_scores = scores
        if tracker.should_stop:
            break
    model.eval()
    return tracker.result(
        config.output,
        f"{config.metric} AP 0.5:0.95",
        str(device),
        {
            "flavour": flavour,
            "categories": categories,
            "train_images": len(dataset),
            "val_images": len(val.images),
            "annotations_left_out": skipped,
            "best_val_scores": best_scores,
            "seconds": time.perf_counter() - started,
        },
    )
