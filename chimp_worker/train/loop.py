"""What the classifier and detector trainers share: seeding, the one-cycle optimiser, early
stopping on the validation metric, atomic checkpoint writes and progress reporting."""

from __future__ import annotations

import os
import random
import time
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


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss_of: Callable[[Any], torch.Tensor],
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    reporter: TrainingReporter,
) -> float:
    """One pass over the training batches, the one-cycle rate stepped per batch; returns the
    mean loss. ``loss_of`` turns a batch into the loss, the only part the models differ in."""
    model.train()
    losses: list[float] = []
    for batch in batches:
        loss = loss_of(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        reporter.step(losses[-1])
    return sum(losses) / len(losses)


class EpochTracker:
    """The bookkeeping both trainers do around their epochs: early stopping on the validation
    metric, the history, the reporter, and the :class:`TrainingResult` at the end. One place, so
    the classifier and detector keep and stop by exactly the same rule."""

    def __init__(
        self,
        patience: int,
        reporter: TrainingReporter,
        start_metric: float,
        start_val_loss: float | None = None,
    ) -> None:
        self.reporter = reporter
        self.start_metric = start_metric
        self.stopper = EarlyStopping(patience)
        self.stopper.update(0, start_metric)
        self.history = [EpochRecord(0, "start", None, start_val_loss, start_metric, False, None)]
        self.epochs_run = 0
        reporter.end_epoch(self.history[0])

    @property
    def should_stop(self) -> bool:
        return self.stopper.should_stop

    def end_epoch(
        self,
        epoch: int,
        phase: str,
        *,
        train_loss: float,
        val_loss: float | None,
        metric: float,
        learning_rate: float,
        started: float,
        on_improved: Callable[[], Any],
    ) -> bool:
        """Record a validated epoch; calls ``on_improved`` (write the checkpoint) before the
        reporter hears of the epoch when it is a new best, and returns whether it was."""
        self.epochs_run = epoch
        improved = self.stopper.update(epoch, metric)
        if improved:
            on_improved()
        record = EpochRecord(
            epoch,
            phase,
            train_loss,
            val_loss,
            metric,
            improved,
            learning_rate,
            time.perf_counter() - started,
        )
        self.history.append(record)
        self.reporter.end_epoch(record)
        return improved

    def result(
        self, output: Path, metric_name: str, device: str, details: dict[str, Any]
    ) -> TrainingResult:
        return TrainingResult(
            output=Path(output),
            metric_name=metric_name,
            start_metric=self.start_metric,
            best_metric=float(self.stopper.best or 0.0),
            best_epoch=self.stopper.best_epoch,
            epochs_run=self.epochs_run,
            stopped_early=self.stopper.should_stop,
            device=device,
            history=self.history,
            details=details,
        )
