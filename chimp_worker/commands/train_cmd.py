"""``chimp-worker train``: fine-tune the CHiMP models on a facility's own labelled images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import (
    FILE,
    flavour_option,
    image_root_option,
    input_size_option,
    label_map_option,
    optimiser_options,
    training_input_options,
    training_run_options,
)

if TYPE_CHECKING:  # torch stays unimported until a command runs
    from chimp_worker.evaluate.coco import IouType
    from chimp_worker.train.classifier import Metric
    from chimp_worker.train.loop import TrainingResult


@click.group()
def train() -> None:
    """Fine-tune the classifier or a detector; checkpoints load in the worker unchanged."""


def _finish(result: TrainingResult, history: Path | None) -> None:
    data = result.as_dict()
    click.echo(
        f"{data['metric_name']}: start {data['start_metric']:.4f}, best {data['best_metric']:.4f}"
        f" at epoch {data['best_epoch']} of {data['epochs_run']}"
        + (" (stopped early)" if data["stopped_early"] else "")
        + f" on {data['device']}"
    )
    if not data["improved"]:
        click.echo("no epoch improved on the starting model: the output holds the starting model")
    click.echo(f"wrote {data['output']}")
    if history is not None:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_text(json.dumps(data, indent=2, default=str) + "\n")
        click.echo(f"wrote {history}")


@train.command("classifier")
@click.argument("train_csv", type=FILE)
@training_input_options(
    output_help="Checkpoint to write.",
    val_help="Validation CSV (else --val-fraction).",
    val_fraction_help="Stratified share held out without --val.",
    init_help="Published-format checkpoint to fine-tune (else random weights).",
)
@click.option(
    "--model-type",
    default="convnext_tiny_384_in22ft1k",
    show_default=True,
    help="timm architecture when training without --init.",
)
@label_map_option("'table1' (VMXi ten-to-four) or a JSON/CSV file of from,to.")
@image_root_option()
@input_size_option("Input size S (default: classifier_input_size, 512).")
@optimiser_options(
    epochs=10,
    batch_size=16,
    batch_range=(2, 1024),
    max_lr=1e-4,
    patience=3,
    patience_help="Stop after this many epochs without improvement (0: never).",
)
@click.option(
    "--frozen-epochs",
    type=click.IntRange(0, 1000),
    default=1,
    show_default=True,
    help="First epochs train only the head, backbone frozen (the paper: 1).",
)
@click.option("--head-lr", type=float, help="Peak rate of the head-only epochs [10 x --lr].")
@click.option(
    "--metric",
    type=click.Choice(["mean_f1", "accuracy"]),
    default="mean_f1",
    show_default=True,
    help="Validation metric for keeping and stopping.",
)
@click.option(
    "--balance/--no-balance",
    default=True,
    show_default=True,
    help="Sample classes in inverse proportion to their frequency.",
)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option(
    "--keep-optimizer-state",
    is_flag=True,
    help="Store AdamW's moments in the checkpoint (to resume; triples its size).",
)
@training_run_options()
@pass_app
def classifier(
    app: AppContext,
    train_csv: Path,
    output: Path,
    val_path: Path | None,
    val_fraction: float,
    init: Path | None,
    model_type: str,
    label_map: str | None,
    image_root: Path | None,
    input_size: int | None,
    epochs: int,
    frozen_epochs: int,
    batch_size: int,
    max_lr: float,
    head_lr: float | None,
    weight_decay: float,
    patience: int,
    metric: Metric,  # click.Choice admits only its values
    balance: bool,
    augment: bool,
    keep_optimizer_state: bool,
    seed: int,
    workers: int,
    history: Path | None,
) -> None:
    """Fine-tune the classifier on a CSV of path,label rows.

    AdamW with a one-cycle learning rate, a head-only first epoch, class-balanced sampling,
    the paper's augmentations, early stopping on the validation metric. The checkpoint is
    written in the published layout (and only when the metric improves), so
    CHIMP_CLASSIFIER_PATH can point at it directly. Uses CUDA when present (CHIMP_DEVICE).

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/mock-train --count 200
      chimp-worker train classifier /tmp/mock-train/labels.csv --init classifier.pt \\
          --output fine-tuned.pt --input-size 384 --epochs 12
      chimp-worker train classifier scores.csv --label-map table1 --val test.csv -o new.pt
    """
    from chimp_worker.train.classifier import ClassifierTrainingConfig
    from chimp_worker.train.progress import RichReporter
    from chimp_worker.train.runner import run_classifier_training

    settings = app.settings()
    config = ClassifierTrainingConfig(
        output=output,
        init=init,
        model_type=model_type,
        input_size=input_size or settings.classifier_input_size,
        epochs=epochs,
        frozen_epochs=frozen_epochs,
        batch_size=batch_size,
        max_lr=max_lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        patience=patience,
        metric=metric,
        balanced=balance,
        augment=augment,
        seed=seed,
        num_workers=workers,
        keep_optimizer_state=keep_optimizer_state,
    )
    with RichReporter(metric) as reporter:
        result = run_classifier_training(
            settings,
            train_csv,
            config,
            val_csv=val_path,
            val_fraction=val_fraction,
            label_map=label_map,
            image_root=image_root,
            reporter=reporter,
        )
    _finish(result, history)


@train.command("detector")
@click.argument("train_annotations", type=FILE)
@training_input_options(
    output_help="state_dict file to write.",
    val_help="Validation COCO JSON (else --val-fraction).",
    val_fraction_help="Share of images held out without --val.",
    init_help="Published-format detector to fine-tune.",
)
@flavour_option(
    help_text="vmxi: crystals; xchem: drops and crystals (required without --init).",
    detector=True,
)
@image_root_option("Relative image paths are under this folder (default: the JSON's folder).")
@optimiser_options(epochs=20, batch_size=4, batch_range=(1, 256), max_lr=2e-4, patience=5)
@click.option(
    "--metric",
    type=click.Choice(["bbox", "segm"]),
    default="bbox",
    show_default=True,
    help="Validation mAP (IoU 0.5:0.95) of boxes or masks.",
)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option(
    "--max-detections",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Detections per image kept for the validation mAP (COCO's cap).",
)
@click.option(
    "--min-size",
    type=click.IntRange(32, 4096),
    help="torchvision's internal resize (default 800); smaller only to experiment.",
)
@click.option("--max-size", type=click.IntRange(32, 4096), help="(default 1333)")
@training_run_options()
@pass_app
def detector(
    app: AppContext,
    train_annotations: Path,
    output: Path,
    val_path: Path | None,
    val_fraction: float,
    init: Path | None,
    flavour: str | None,
    image_root: Path | None,
    epochs: int,
    batch_size: int,
    max_lr: float,
    weight_decay: float,
    patience: int,
    metric: IouType,  # click.Choice admits only its values
    augment: bool,
    max_detections: int,
    min_size: int | None,
    max_size: int | None,
    seed: int,
    workers: int,
    history: Path | None,
) -> None:
    """Fine-tune a Mask R-CNN detector on COCO annotations (polygon masks).

    AdamW with a one-cycle learning rate, the paper's augmentations, the worker's own
    preprocessing; the validation mAP (pycocotools) decides what is kept and when to stop.
    Writes a raw state_dict, the published format: point CHIMP_VMXI_DETECTOR_PATH or
    CHIMP_XCHEM_DETECTOR_PATH at it. A VMXi detector learns crystals only (drop
    annotations are left out, as in the paper).

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/xchem-train --flavour xchem --count 100
      chimp-worker train detector /tmp/xchem-train/annotations.json --init xchem.pt \\
          --output xchem-local.pt --epochs 20
    """
    from chimp_worker.train.detector import DetectorTrainingConfig
    from chimp_worker.train.progress import RichReporter
    from chimp_worker.train.runner import run_detector_training

    settings = app.settings()
    config = DetectorTrainingConfig(
        output=output,
        init=init,
        flavour=flavour,
        epochs=epochs,
        batch_size=batch_size,
        max_lr=max_lr,
        weight_decay=weight_decay,
        patience=patience,
        metric=metric,
        augment=augment,
        seed=seed,
        num_workers=workers,
        min_size=min_size,
        max_size=max_size,
        max_detections=max_detections,
    )
    with RichReporter(f"{metric} mAP") as reporter:
        result = run_detector_training(
            settings,
            train_annotations,
            config,
            val_annotations=val_path,
            val_fraction=val_fraction,
            image_root=image_root,
            reporter=reporter,
        )
    _finish(result, history)
