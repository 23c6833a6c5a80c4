"""``chimp-worker train``: fine-tune the CHiMP models on a facility's own labelled images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from chimp_worker.cli import AppContext, pass_app

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.group()
def train() -> None:
    """Fine-tune the classifier or a detector; checkpoints load in the worker unchanged."""


def _finish(result: object, history: Path | None) -> None:
    data = result.as_dict()  # type: ignore[attr-defined]
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
@click.argument("train_csv", type=_FILE)
@click.option("--output", "-o", type=_FILE, required=True, help="Checkpoint to write.")
@click.option("--val", "val_csv", type=_FILE, help="Validation CSV (else --val-fraction).")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Stratified share held out without --val.",
)
@click.option(
    "--init", type=_FILE, help="Published-format checkpoint to fine-tune (else random weights)."
)
@click.option(
    "--model-type",
    default="convnext_tiny_384_in22ft1k",
    show_default=True,
    help="timm architecture when training without --init.",
)
@click.option("--label-map", help="'table1' (VMXi ten-to-four) or a JSON/CSV file of from,to.")
@click.option(
    "--image-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Relative image paths are under this folder (default: the CSV's folder).",
)
@click.option(
    "--input-size",
    type=click.IntRange(32, 2048),
    help="Input size S (default: classifier_input_size, 512).",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--frozen-epochs",
    type=click.IntRange(0, 1000),
    default=1,
    show_default=True,
    help="First epochs train only the head, backbone frozen (the paper: 1).",
)
@click.option("--batch-size", type=click.IntRange(2, 1024), default=16, show_default=True)
@click.option(
    "--lr",
    "max_lr",
    type=float,
    default=1e-4,
    show_default=True,
    help="Peak one-cycle learning rate (AdamW).",
)
@click.option("--head-lr", type=float, help="Peak rate of the head-only epochs [10 x --lr].")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0, 1000),
    default=3,
    show_default=True,
    help="Stop after this many epochs without improvement (0: never).",
)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Data-loader processes.",
)
@click.option("--history", type=_FILE, help="Write the run's history and metrics as JSON.")
@pass_app
def classifier(
    app: AppContext,
    train_csv: Path,
    output: Path,
    val_csv: Path | None,
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
    metric: str,
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
        metric=metric,  # type: ignore[arg-type]
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
            val_csv=val_csv,
            val_fraction=val_fraction,
            label_map=label_map,
            image_root=image_root,
            reporter=reporter,
        )
    _finish(result, history)


@train.command("detector")
@click.argument("train_annotations", type=_FILE)
@click.option("--output", "-o", type=_FILE, required=True, help="state_dict file to write.")
@click.option(
    "--val", "val_annotations", type=_FILE, help="Validation COCO JSON (else --val-fraction)."
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of images held out without --val.",
)
@click.option("--init", type=_FILE, help="Published-format detector to fine-tune.")
@click.option(
    "--flavour",
    type=click.Choice(["vmxi", "xchem"]),
    help="vmxi: crystals; xchem: drops and crystals (required without --init).",
)
@click.option(
    "--image-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Relative image paths are under this folder (default: the JSON's folder).",
)
@click.option("--epochs", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option(
    "--lr",
    "max_lr",
    type=float,
    default=2e-4,
    show_default=True,
    help="Peak one-cycle learning rate (AdamW).",
)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--patience", type=click.IntRange(0, 1000), default=5, show_default=True)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True)
@click.option("--history", type=_FILE, help="Write the run's history and metrics as JSON.")
@pass_app
def detector(
    app: AppContext,
    train_annotations: Path,
    output: Path,
    val_annotations: Path | None,
    val_fraction: float,
    init: Path | None,
    flavour: str | None,
    image_root: Path | None,
    epochs: int,
    batch_size: int,
    max_lr: float,
    weight_decay: float,
    patience: int,
    metric: str,
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
        flavour=flavour,  # type: ignore[arg-type]
        epochs=epochs,
        batch_size=batch_size,
        max_lr=max_lr,
        weight_decay=weight_decay,
        patience=patience,
        metric=metric,  # type: ignore[arg-type]
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
            val_annotations=val_annotations,
            val_fraction=val_fraction,
            image_root=image_root,
            reporter=reporter,
        )
    _finish(result, history)
