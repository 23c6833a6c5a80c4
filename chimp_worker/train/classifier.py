"""Fine-tune the CHiMP classifier on a facility's own labelled images (paper section 3.1.4).

AdamW with a one-cycle learning rate; a first epoch that trains only the two-layer head with
the ConvNeXt backbone frozen; classes sampled in inverse proportion to their frequency; the
paper's augmentations; after each epoch the model is scored on the validation set and written
(in the published checkpoint layout, atomically) only when the validation metric improved;
training stops early after ``patience`` epochs without improvement. The output file is always
a checkpoint the worker loads unchanged: if no epoch beats the starting model, the starting
model is what it holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.evaluate.metrics import (
    ClassificationMetrics,
    classification_metrics,
    order_classes,
)
from chimp_worker.log import get_logger
from chimp_worker.models import (
    DEFAULT_CLASSIFIER_TYPE,
    build_classifier,
    load_classifier,
    resolve_device,
    save_classifier_checkpoint,
)
from chimp_worker.train.augment import ClassifierAugment
from chimp_worker.train.data import ClassifierImages, class_balanced_sampler, image_counts
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

Metric = Literal["mean_f1", "accuracy"]


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """How to train; the defaults follow the paper where it says, safe values where not."""

    output: Path
    init: Path | None = None  # a published-format checkpoint; None trains from random weights
    model_type: str = DEFAULT_CLASSIFIER_TYPE  # timm name, only used without ``init``
    input_size: int = 512  # the paper's final phase; the worker's classifier_input_size
    epochs: int = 10
    frozen_epochs: int = 1  # head-only epochs first (the paper: one)
    batch_size: int = 16
    max_lr: float = 1e-4
    head_lr: float | None = None  # the head-only phase's peak rate; default 10 x max_lr
    weight_decay: float = 0.01
    patience: int = 3
    metric: Metric = "mean_f1"  # the paper stopped on accuracy; F1 suits unbalanced sets
    balanced: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    keep_optimizer_state: bool = False  # the moments triple the file size; keep to resume
    max_pixels: int = 40_000_000


def _validate(
    model: nn.Module,
    loader: DataLoader,
    class_names: Sequence[str],
    device: torch.device,
) -> tuple[float, ClassificationMetrics]:
    model.eval()
    losses: list[float] = []
    truth: list[str] = []
    predicted: list[str] = []
    with torch.inference_mode():
        for inputs, targets in loader:
            logits = model(inputs.to(device)).float().cpu()
            losses.append(nn.functional.cross_entropy(logits, targets, reduction="sum").item())
            truth.extend(class_names[int(t)] for t in targets)
            predicted.extend(class_names[int(p)] for p in logits.argmax(dim=1))
    metrics = classification_metrics(truth, predicted, classes=order_classes(class_names))
    return sum(losses) / max(1, len(truth)), metrics


def _score(metrics: ClassificationMetrics, metric: Metric) -> float:
    return metrics.mean_f1 if metric == "mean_f1" else metrics.accuracy


def _set_trainable(model: nn.Module, head_only: bool) -> list[nn.Parameter]:
    for parameter in model.parameters():
        parameter.requires_grad = not head_only
    if head_only:
        for parameter in model.get_submodule("head.fc").parameters():
            parameter.requires_grad = True
    return [p for p in model.parameters() if p.requires_grad]


def train_classifier(
    train_rows: Sequence[LabelledImage],
    val_rows: Sequence[LabelledImage],
    config: ClassifierTrainingConfig,
    reporter: TrainingReporter | None = None,
) -> TrainingResult:
    """Train, validate each epoch, write the best model to ``config.output``."""
    reporter = reporter or SilentReporter()
    if len(train_rows) < 2:
        raise DatasetError(f"need at least 2 training images, got {len(train_rows)}")
    if not val_rows:
        raise DatasetError("need at least 1 validation image")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if config.init is not None:
        loaded = load_classifier(config.init)
        model, class_names, model_type = loaded.model, loaded.class_names, loaded.model_type
    else:
        class_names, model_type = CLASS_NAMES, config.model_type
        model = build_classifier(len(class_names), model_type)
    model.to(device)

    augment = ClassifierAugment() if config.augment else None
    train_set = ClassifierImages(
        train_rows,
        class_names,
        config.input_size,
        augment=augment,
        seed=config.seed,
        max_pixels=config.max_pixels,
    )
    val_set = ClassifierImages(
        val_rows, class_names, config.input_size, seed=config.seed, max_pixels=config.max_pixels
    )
    missing = [name for n, name in enumerate(class_names) if n not in set(train_set.labels)]
    if missing:
        log.warning("train.classes_without_examples", classes=missing)
    batch_size = min(config.batch_size, len(train_set))
    sampler = class_balanced_sampler(train_set.labels, config.seed) if config.balanced else None
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        drop_last=len(train_set) > batch_size,  # BatchNorm in the head needs 2+ per batch
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.num_workers)

    def save(val_loss: float, optimiser: torch.optim.Optimizer | None) -> None:
        state = optimiser.state_dict() if optimiser and config.keep_optimizer_state else None
        write_atomically(
            config.output,
            lambda path: save_classifier_checkpoint(
                model, class_names, path, model_type, loss_val=val_loss, optimizer_state=state
            ),
        )

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.cross_entropy(model(inputs.to(device)), targets.to(device))

    started = time.perf_counter()
    val_loss, metrics = _validate(model, val_loader, class_names, device)
    start_metric = _score(metrics, config.metric)
    tracker = EpochTracker(config.patience, reporter, start_metric, val_loss)
    best_metrics = metrics
    save(val_loss, None)  # the output always holds a loadable model, from the start

    head_lr = config.head_lr if config.head_lr is not None else 10 * config.max_lr
    phases = [("head", min(config.frozen_epochs, config.epochs))]
    phases.append(("all", config.epochs - phases[0][1]))
    epoch = 0
    for phase, phase_epochs in phases:
        if phase_epochs <= 0 or tracker.should_stop:
            continue
        parameters = _set_trainable(model, head_only=phase == "head")
        optimiser, schedule = one_cycle(
            parameters,
            max_lr=head_lr if phase == "head" else config.max_lr,
            weight_decay=config.weight_decay,
            epochs=phase_epochs,
            steps_per_epoch=len(loader),
        )
        for _ in range(phase_epochs):
            epoch += 1
            epoch_started = time.perf_counter()
            train_set.set_epoch(epoch)
            reporter.start_epoch(epoch, config.epochs, phase, len(loader))
            train_loss = train_epoch(model, loader, loss_of, optimiser, schedule, reporter)
            val_loss, metrics = _validate(model, val_loader, class_names, device)
            if tracker.end_epoch(
                epoch,
                phase,
                train_loss=train_loss,
                val_loss=val_loss,
                metric=_score(metrics, config.metric),
                learning_rate=float(schedule.get_last_lr()[0]),  # typed float | Tensor
                started=epoch_started,
                on_improved=partial(save, val_loss, optimiser),
            ):
                best_metrics = metrics
            if tracker.should_stop:
                break
    _set_trainable(model, head_only=False)
    if not tracker.stopper.best_epoch:
        log.warning("train.no_improvement", metric=config.metric, start=start_metric)
    return tracker.result(
        config.output,
        config.metric,
        str(device),
        {
            "model_type": model_type,
            "class_names": list(class_names),
            "input_size": config.input_size,
            "train_images": image_counts([r.label for r in train_rows]),
            "val_images": image_counts([r.label for r in val_rows]),
            "best_val_metrics": best_metrics.as_dict(),
            "seconds": time.perf_counter() - started,
        },
    )
