"""A rich progress bar for training: one bar per epoch with the running loss, and one line per
finished epoch with the validation metric (marked when it improved and the model was saved)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chimp_worker.train.loop import EpochRecord


class RichReporter:
    """Implements ``TrainingReporter``; use as a context manager around the training call."""

    def __init__(self, metric_name: str, console: Console | None = None) -> None:
        self.metric_name = metric_name
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None
        self.losses: list[float] = []
        self.best: float | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_epoch(self, epoch: int, epochs: int, phase: str, steps: int) -> None:
        self.losses = []
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = "head only" if phase == "head" else "all layers"
        self.task = self.progress.add_task(
            f"epoch {epoch}/{epochs} ({label})", total=steps, loss="-", best=self._best()
        )

    def step(self, loss: float) -> None:
        self.losses.append(loss)
        mean = sum(self.losses) / len(self.losses)
        self.progress.update(self.task, advance=1, loss=f"{mean:.4f}")

    def end_epoch(self, record: EpochRecord) -> None:
        if self.best is None or record.improved or record.epoch == 0:
            self.best = record.metric if self.best is None else max(self.best, record.metric)
        parts = [f"epoch {record.epoch:>3} {record.phase:<5}"]
        if record.train_loss is not None:
            parts.append(f"train loss {record.train_loss:.4f}")
        if record.val_loss is not None:
            parts.append(f"val loss {record.val_loss:.4f}")
        parts.append(f"{self.metric_name} {record.metric:.4f}")
        if record.improved:
            parts.append("[green]improved, saved[/green]")
        self.progress.console.print("  ".join(parts))

    def _best(self) -> str:
        return "-" if self.best is None else f"{self.best:.4f}"
