"""What the classifier and detector trainers share: seeding, the one-cycle optimiser, early
stopping on the validation metric, atomic checkpoint writes and progress reporting."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from chimp_worker.log import get_logger

log = get_logger(__name__)


def seed_everything(seed: int) -> None:
    """Python, numpy and torch generators from one seed (CPU runs are then repeatable)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def one_cycle(
    parameters: Iterable[torch.nn.Parameter],
    *,
    max_lr: float,
    weight_decay: float,
    epochs: int,
    steps_per_epoch: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW with a '1cycle' learning rate (Smith & Topin), stepped once per batch."""
    optimiser = torch.optim.AdamW(list(parameters), lr=max_lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=max_lr, epochs=max(1, epochs), steps_per_epoch=max(1, steps_per_epoch)
    )
    return optimiser, schedule


@dataclass(frozen=True)
class EpochRecord:
    """One line of training history."""

    epoch: int  # 0 is the model before training
    phase: str  # "start", "head" (frozen backbone) or "all"
    train_loss: float | None
    val_loss: float | None
    metric: float
    improved: bool
    learning_rate: float | None = None
    seconds: float = 0.0


class EarlyStopping:
    """Keeps the best metric; says stop after ``patience`` epochs without improvement."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.stale = 0

    def update(self, epoch: int, metric: float) -> bool:
        """Record an epoch's metric; True when it is a new best."""
        if self.best is None or metric > self.best + self.min_delta:
            self.best, self.best_epoch, self.stale = metric, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience


def write_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write to a temporary file beside ``path`` and rename it over, so a crash (or the
    worker reading the file meanwhile) never sees half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)
    return path


class TrainingReporter(Protocol):
    """Receives progress; the CLI draws a rich progress bar, tests record or ignore it."""

    def start_epoch(self, epoch: int, epochs: int, phase: str, steps: int) -> None: ...

    def step(self, loss: float) -> None: ...

    def end_epoch(self, record: EpochRecord) -> None: ...


class SilentReporter:
    def start_epoch(self, epoch: int, epochs: int, phase: str, steps: int) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def end_epoch(self, record: EpochRecord) -> None:
        log.info("train.epoch", **asdict(record))


@dataclass
class TrainingResult:
    """What a run produced: the checkpoint, the metric before and after, the history."""

    output: Path
    metric_name: str
    start_metric: float
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    device: str
    history: list[EpochRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        return self.best_epoch > 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["improved"] = self.improved
        return data
