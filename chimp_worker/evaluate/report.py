"""Readable tables in the paper's layouts, JSON, and precision-recall plots (PNG).

Table 5: per-class F1 and their mean, one row per model and test set. Tables 6/8: mAP by box
or mask, IoU threshold and object size. Tables 7/9: the detector as a crystals / no crystals
classifier. Plots use matplotlib's Agg backend (files only, no display).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from chimp_worker.evaluate.coco import ApScores, CocoEvaluation, PrCurve
from chimp_worker.evaluate.metrics import ClassificationMetrics

_SIZES = (
    ("ap", "All"),
    ("ap_small", "<32 x 32"),
    ("ap_medium", "32 x 32-96 x 96"),
    ("ap_large", ">96 x 96"),
)


def _number(value: float | None, places: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{places}f}"


def table5(rows: Sequence[tuple[str, str, ClassificationMetrics]]) -> Table:
    """Per-class F1 and mean F1, one row per (model, test set, metrics), as in Table 5."""
    classes: list[str] = []
    for _, _, metrics in rows:
        classes.extend(c for c in metrics.classes if c not in classes)
    table = Table(title="Per-class F1 (paper Table 5 layout)")
    table.add_column("Model")
    table.add_column("Test set")
    for name in classes:
        table.add_column(name.capitalize(), justify="right")
    table.add_column("Mean", justify="right")
    for model, test_set, metrics in rows:
        cells = []
        for name in classes:
            if name in metrics.classes and metrics.scores(name).support > 0:
                cells.append(_number(metrics.scores(name).f1))
            else:
                cells.append("n/a")  # no examples in this test set: left out of the mean
        table.add_row(model, test_set, *cells, _number(metrics.mean_f1))
    return table


def _add_class_rows(table: Table, metrics: ClassificationMetrics, *, predicted: bool) -> None:
    """A row per class of precision, recall, F1 and support (and predicted count): the
    classifier's table and the detector-as-classifier table read the same way."""
    headings = ["Class", "Precision", "Recall", "F1", "Support"]
    for heading in [*headings, "Predicted"] if predicted else headings:
        table.add_column(heading, justify="left" if heading == "Class" else "right")
    for entry in metrics.per_class:
        cells = [
            entry.name.capitalize(),
            _number(entry.precision),
            _number(entry.recall),
            _number(entry.f1),
            str(entry.support),
        ]
        table.add_row(*cells, *([str(entry.predicted)] if predicted else []))


def per_class_table(metrics: ClassificationMetrics, title: str) -> Table:
    """Precision, recall, F1 and counts per class (Supplementary Table S9's columns)."""
    table = Table(title=title)
    _add_class_rows(table, metrics, predicted=True)
    table.caption = f"mean F1 {metrics.mean_f1:.4f}, accuracy {metrics.accuracy:.4f}, "
    table.caption += f"{metrics.images} images"
    if any(metrics.unpredicted):
        table.caption += f", {sum(metrics.unpredicted)} without a prediction"
    return table


def confusion_table(metrics: ClassificationMetrics) -> Table:
    """Rows: true class; columns: predicted class (and 'none' when some had no prediction)."""
    table = Table(title="Confusion matrix (rows true, columns predicted)")
    table.add_column("True \\ predicted")
    for name in metrics.classes:
        table.add_column(name.capitalize(), justify="right")
    show_none = any(metrics.unpredicted)
    if show_none:
        table.add_column("None", justify="right")
    for name, row, missing in zip(
        metrics.classes, metrics.confusion, metrics.unpredicted, strict=True
    ):
        cells = [str(v) for v in row] + ([str(missing)] if show_none else [])
        table.add_row(name.capitalize(), *cells)
    return table


def _map_rows(scores: ApScores) -> list[tuple[str, str, str, str]]:
    kind = "Bounding box" if scores.iou_type == "bbox" else "Segmentation"
    rows = [(kind, "0.5", "All", _number(scores.ap50, 3))]
    rows.append(("", "0.75", "All", _number(scores.ap75, 3)))
    for attribute, size in _SIZES:
        threshold = "0.5-0.95, step 0.05" if attribute == "ap" else ""
        rows.append(("", threshold, size, _number(getattr(scores, attribute), 3)))
    return rows


def map_table(evaluation: CocoEvaluation, category: str = "all") -> Table:
    """Tables 6/8: mAP by type, IoU threshold and object size for one category (or all)."""
    what = "averaged over the categories" if category == "all" else f"for '{category}'"
    table = Table(title=f"Mean average precision {what} (paper Tables 6/8 layout)")
    for heading in ("Type", "Threshold", "Size (pixels)", "mAP score"):
        table.add_column(heading, justify="right" if heading == "mAP score" else "left")
    for scores in evaluation.scores:
        if scores.category == category:
            for row in _map_rows(scores):
                table.add_row(*row)
    table.caption = (
        f"{evaluation.images} images, {evaluation.predictions} detections, "
        f"max {evaluation.max_detections} per image"
    )
    return table


def binary_table(metrics: ClassificationMetrics, score_threshold: float) -> Table:
    """Tables 7/9: precision, recall and F1 of 'crystals' and 'no crystals'."""
    table = Table(
        title=(
            "Detector as a classifier: 'Crystals' when at least one crystal scores "
            f">= {score_threshold:g} (paper Tables 7/9 layout)"
        )
    )
    _add_class_rows(table, metrics, predicted=False)
    return table


def hits_table(rows: Sequence[tuple[str, ClassificationMetrics]], title: str) -> Table:
    """Hit calling: precision, recall and F1 of 'crystals' for each rule (classifier alone,
    detector alone, combined), with the images behind them."""
    table = Table(title=title)
    for heading in ("rule", "precision", "recall", "F1", "crystals", "called", "images"):
        table.add_column(heading, justify="left" if heading == "rule" else "right")
    for name, metrics in rows:
        scores = metrics.scores("crystals")
        table.add_row(
            name,
            _number(scores.precision),
            _number(scores.recall),
            _number(scores.f1),
            str(scores.support),
            str(scores.predicted),
            str(metrics.images),
        )
    return table


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 5), dpi=100)
    axes.set_xlim(0, 1.0)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("Recall")
    axes.set_ylabel("Precision")
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Any, path: Path) -> Path:
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return path


def plot_detector_curves(curves: Sequence[PrCurve], folder: Path) -> list[Path]:
    """One PNG per IoU type ('pr_bbox.png', 'pr_segm.png'): a line per category and IoU."""
    written = []
    for iou_type in dict.fromkeys(c.iou_type for c in curves):
        figure, axes = _figure()
        kind = "boxes" if iou_type == "bbox" else "masks"
        axes.set_title(f"Precision-recall, {kind} (COCO 101-point interpolation)")
        for curve in (c for c in curves if c.iou_type == iou_type):
            if curve.recall:
                axes.plot(
                    curve.recall,
                    curve.precision,
                    label=f"{curve.category} @ IoU {curve.iou:g}",
                    linestyle="-" if curve.iou == 0.5 else "--",
                )
        axes.legend(loc="lower left")
        written.append(_save(figure, Path(folder) / f"pr_{iou_type}.png"))
    return written


def plot_classifier_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], folder: Path
) -> Path:
    """'pr_classes.png': one-vs-rest precision-recall per class from the probabilities."""
    figure, axes = _figure()
    axes.set_title("Precision-recall per class (one vs rest)")
    for name, (recall, precision) in curves.items():
        axes.step(recall, precision, where="post", label=name)
    if curves:
        axes.legend(loc="lower left")
    return _save(figure, Path(folder) / "pr_classes.png")
