"""``chimp-worker evaluate``: judge models on expert-labelled images with the paper's metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from chimp_worker.analysis import CLASS_NAMES_NOTE
from chimp_worker.cli import AppContext, pass_app
from chimp_worker.commands.options import (
    FILE,
    FOLDER,
    flavour_option,
    image_root_option,
    input_size_option,
    json_output_option,
    label_map_option,
    plots_option,
    render_size_option,
    seed_option,
)

_LABEL_MAP_HELP = (
    "Map the CSV's labels first: 'table1' (the paper's VMXi ten-to-four mapping, by score "
    "number or name) or a JSON/CSV file of from,to."
)


@click.group()
def evaluate() -> None:
    """Score models on labelled data (the CHiMP paper's Tables 5-9), or make a mock data set."""


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(what, total=total or None)
        yield lambda done: bar.advance(task, done)


def _write_outputs(data: dict, json_path: Path | None, plots: list[Path]) -> None:
    from chimp_worker.evaluate.report import write_json

    if json_path is not None:
        click.echo(f"wrote {write_json(json_path, data)}")
    for path in plots:
        click.echo(f"wrote {path}")


@evaluate.command("classifier")
@click.argument("labels_csv", type=FILE)
@click.option(
    "--model",
    "model_path",
    type=FILE,
    help="Classifier checkpoint (default: classifier_path from the settings).",
)
@label_map_option(_LABEL_MAP_HELP)
@click.option(
    "--from-database",
    is_flag=True,
    help="Score the results already in ISPyB (database_url) instead of running a model.",
)
@click.option(
    "--schema",
    default="CHIMP",
    show_default=True,
    help="With --from-database: the BLSampleImageAutoScoreSchema to read.",
)
@image_root_option()
@input_size_option("Classifier input size S (default: classifier_input_size, 512).")
@json_output_option("Write every number and every image's outcome as JSON here.")
@plots_option("Write pr_classes.png (one-vs-rest precision-recall) into this folder.")
@pass_app
def classifier(
    app: AppContext,
    labels_csv: Path,
    model_path: Path | None,
    label_map: str | None,
    from_database: bool,
    schema: str,
    image_root: Path | None,
    input_size: int | None,
    json_path: Path | None,
    plots: Path | None,
) -> None:
    """Score a classifier on a labelled CSV (paper Table 5).

    Per-class precision, recall and F1, mean F1 and the confusion matrix, for a CSV of
    path,label rows.

    Images that cannot be read, or have no result in the database, are counted as 'no
    prediction' (a miss for their true class), never dropped.

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/mock-test --count 40
      chimp-worker evaluate classifier /tmp/mock-test/labels.csv --model classifier.pt
      chimp-worker evaluate classifier vmxi-scores.csv --label-map table1 \\
          --json result.json --plots plots/
      chimp-worker evaluate classifier scored.csv --from-database
    """
    from rich.console import Console

    from chimp_worker.evaluate import report
    from chimp_worker.evaluate.runner import count_rows, run_classifier_evaluation

    overrides = {"classifier_input_size": input_size} if input_size else {}
    settings = app.settings(**overrides)
    with _progress(count_rows(labels_csv, None), "classifying") as advance:
        result = run_classifier_evaluation(
            settings,
            labels_csv,
            model_path=model_path,
            label_map=label_map,
            from_database=from_database,
            schema=schema,
            image_root=image_root,
            progress=advance,
        )
    console = Console()
    console.print(report.table5([(result.name, result.test_set, result.metrics)]))
    console.print(report.per_class_table(result.metrics, "Per-class precision, recall and F1"))
    console.print(report.confusion_table(result.metrics))
    console.print(CLASS_NAMES_NOTE)
    written = [report.plot_classifier_curves(result.pr_curves(), plots)] if plots else []
    _write_outputs(result.as_dict(), json_path, written)


@evaluate.command("detector")
@click.option(
    "--annotations",
    type=FILE,
    help="COCO instances JSON (boxes and polygon masks): gives mAP (Tables 6/8).",
)
@click.option(
    "--labels",
    "labels_csv",
    type=FILE,
    help="CSV of path,label: gives the crystals/no-crystals table (Tables 7/9). "
    "Without it the table uses the COCO truth.",
)
@click.option(
    "--model",
    "model_path",
    type=FILE,
    help="Detector state_dict (default: the configured detector).",
)
@flavour_option(help_text="Which configured detector to use when several are set.", detector=True)
@label_map_option(_LABEL_MAP_HELP)
@click.option(
    "--category",
    "categories",
    multiple=True,
    help="Evaluate only these categories (default: those the detector predicts).",
)
@click.option(
    "--iou-type",
    "iou_types",
    multiple=True,
    type=click.Choice(["bbox", "segm"]),
    help="Boxes, masks or both (default: both).",
)
@click.option(
    "--max-detections",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="COCO's per-image detection cap for AP (raise it for many microcrystals).",
)
@click.option(
    "--score-threshold",
    type=click.FloatRange(0, 1),
    help="Threshold for the classification table (default: score_threshold, 0.6).",
)
@image_root_option("Relative image paths are under this folder (default: the file's folder).")
@json_output_option("Write every number as JSON here.")
@plots_option("Write pr_bbox.png and pr_segm.png (precision-recall) into this folder.")
@pass_app
def detector(
    app: AppContext,
    annotations: Path | None,
    labels_csv: Path | None,
    model_path: Path | None,
    flavour: str | None,
    label_map: str | None,
    categories: tuple[str, ...],
    iou_types: tuple[str, ...],
    max_detections: int,
    score_threshold: float | None,
    image_root: Path | None,
    json_path: Path | None,
    plots: Path | None,
) -> None:
    """Score a detector: COCO mAP and crystals/no crystals (paper Tables 6-9).

    mAP for boxes and masks at IoU 0.5, 0.75 and 0.5:0.95 and by object size, computed by
    pycocotools; and the detector as a classifier: an image is 'Crystals' when at least one
    crystal scores at or above the threshold.

    mAP uses every detection scoring >= 0.05 (torchvision's default); the classification
    table uses the worker's score_threshold.

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/mock-xchem --flavour xchem --count 20
      chimp-worker evaluate detector --model xchem.pt \\
          --annotations /tmp/mock-xchem/annotations.json --plots plots/ --json det.json
      chimp-worker evaluate detector --flavour vmxi --labels vmxi-test.csv --label-map table1
    """
    from rich.console import Console

    from chimp_worker.evaluate import report
    from chimp_worker.evaluate.runner import count_rows, run_detector_evaluation

    overrides = {"score_threshold": score_threshold} if score_threshold is not None else {}
    settings = app.settings(**overrides)
    with _progress(count_rows(labels_csv, annotations), "detecting") as advance:
        result = run_detector_evaluation(
            settings,
            annotations=annotations,
            labels_csv=labels_csv,
            model_path=model_path,
            flavour=flavour,
            label_map=label_map,
            categories=list(categories) or None,
            iou_types=list(iou_types) or ("bbox", "segm"),
            max_detections=max_detections,
            image_root=image_root,
            progress=advance,
        )
    console = Console()
    written = []
    if result.coco is not None:
        for category in dict.fromkeys(s.category for s in result.coco.scores):
            console.print(report.map_table(result.coco, category))
        if plots:
            written = report.plot_detector_curves(result.coco.curves, plots)
    if result.as_classifier is not None:
        console.print(report.binary_table(result.as_classifier, result.score_threshold))
    for path, error in result.failed:
        click.echo(f"image not evaluated: {path}: {error}", err=True)
    _write_outputs(result.as_dict(), json_path, written)


@evaluate.command("hits")
@click.argument("labels_csv", type=FILE)
@click.option(
    "--val",
    "val_csv",
    type=FILE,
    help="Labelled CSV to choose the thresholds on (implies --choose); LABELS_CSV is the test.",
)
@click.option(
    "--choose",
    "thresholds_out",
    type=FILE,
    help="Choose the thresholds on a validation split and write them to this file "
    "(CHIMP_HIT_THRESHOLDS_FILE reads it; other analysers' entries are kept).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.3,
    show_default=True,
    help="Without --val: the share of LABELS_CSV held out to choose on (stratified).",
)
@seed_option("Seed of the held-out split.")
@label_map_option(_LABEL_MAP_HELP)
@image_root_option()
@json_output_option("Write every number and every image's verdicts as JSON here.")
@pass_app
def hits(
    app: AppContext,
    labels_csv: Path,
    val_csv: Path | None,
    thresholds_out: Path | None,
    val_fraction: float,
    seed: int,
    label_map: str | None,
    image_root: Path | None,
    json_path: Path | None,
) -> None:
    """Compare hit calling by the classifier alone, the detector alone and both combined.

    Runs the worker's analyser (CHiMP models from the settings, else the weight-free
    baseline) on a labelled CSV (labels collapsed to crystals / no crystals, as in the paper's
    Tables 7 and 9) and prints precision, recall and F1 of 'crystals' for each rule with the
    configured thresholds (CHIMP_HIT_THRESHOLDS_FILE, else the defaults). With --choose (or
    --val), the thresholds are first chosen to maximise each rule's F1 on a validation split
    and written to a file the worker reads; the table then shows both splits.

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/mock-hits --count 120
      chimp-worker evaluate hits /tmp/mock-hits/labels.csv
      chimp-worker evaluate hits /tmp/mock-hits/labels.csv --choose hits.json --json h.json
      chimp-worker evaluate hits vmxi-test.csv --val vmxi-val.csv --label-map table1 \\
          --choose /etc/chimp-worker/hits.json
    """
    from rich.console import Console

    from chimp_worker.evaluate import report
    from chimp_worker.evaluate.hits import RULE_TITLES
    from chimp_worker.evaluate.runner import count_rows, run_hits_evaluation
    from chimp_worker.hits.policy import write_thresholds
    from chimp_worker.hits.rules import HIT_RULES

    if val_csv is not None and thresholds_out is None:
        raise click.UsageError("--val chooses thresholds: name the file to write with --choose")
    settings = app.settings()
    total = count_rows(labels_csv, None) + (count_rows(val_csv, None) if val_csv else 0)
    with _progress(total, f"analysing ({settings.effective_analyser})") as advance:
        result = run_hits_evaluation(
            settings,
            labels_csv,
            val_csv=val_csv,
            choose=thresholds_out is not None,
            val_fraction=val_fraction,
            seed=seed,
            label_map=label_map,
            image_root=image_root,
            progress=advance,
        )
    console = Console()
    splits = [("test", result.test)]
    if result.validation:
        splits.insert(0, ("validation", result.validation))
    for on, images in splits:
        title = (
            f"Hit calling by {result.analyser}: 'crystals' on {on} "
            f"({len(images)} images, thresholds "
            f"{'chosen on validation' if result.chosen else 'as configured'})"
        )
        rows = [(RULE_TITLES[rule], result.metrics(rule, on)) for rule in HIT_RULES]
        console.print(report.hits_table(rows, title))
    shown = ", ".join(f"{k}={v}" for k, v in result.thresholds.as_dict().items())
    console.print(f"thresholds: {shown}")
    if thresholds_out is not None:
        written = write_thresholds(
            thresholds_out, result.analyser, result.thresholds, result.provenance()
        )
        click.echo(f"wrote thresholds for {result.analyser}: {written}")
    for image in result.test + result.validation:
        if image.error:
            click.echo(f"image not analysed: {image.row.path}: {image.error}", err=True)
    _write_outputs(result.as_dict(), json_path, [])


@evaluate.command("mock-dataset")
@click.argument("folder", type=FOLDER)
@flavour_option(default="vmxi")
@click.option("--count", type=click.IntRange(1, 100000), default=40, show_default=True)
@seed_option("Image n is rendered with seed + n; use different seeds for train and test.")
@render_size_option(
    32,
    "WIDTHxHEIGHT to render at, or 'native' for the imager's full size.",
    default="320x256",
    native=True,
)
@click.option(
    "--drops/--no-drops",
    default=None,
    help="Annotate drops too (default: for xchem only, as its detector finds drops).",
)
def mock_dataset(
    folder: Path,
    flavour: str,
    count: int,
    seed: int,
    size: tuple[int, int] | None,
    drops: bool | None,
) -> None:
    """Render a labelled mock-imager data set to evaluate or train on.

    Writes images/, labels.csv (path,label) and annotations.json (COCO, polygons traced from
    the exact ground-truth masks).

    \b
    Example:
      chimp-worker evaluate mock-dataset /tmp/mock-train --count 200 --seed 0
      chimp-worker evaluate mock-dataset /tmp/mock-val --count 60 --seed 100000
    """
    from chimp_worker.evaluate.mock_dataset import export_mock_dataset

    try:
        exported = export_mock_dataset(
            folder, flavour=flavour, count=count, seed=seed, size=size, with_drops=drops
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    classes = ", ".join(f"{name} {n}" for name, n in sorted(exported.per_class.items()))
    click.echo(f"wrote {exported.images} images ({classes}; {exported.crystals} crystals)")
    click.echo(CLASS_NAMES_NOTE)
    click.echo(f"labels: {exported.labels_csv}")
    click.echo(f"annotations: {exported.annotations}")
