"""Classification metrics as the CHiMP paper reports them (section 1.1.1, Tables 5, 7 and 9).

Pure functions on label sequences: no torch, no files. Detector mAP is *not* computed here; it
comes from pycocotools (``chimp_worker.evaluate.detector``), never by hand.

Conventions, fixed so that every number in a report has one meaning:

* Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = their harmonic mean (eqs. 1-3).
* Zero division gives 0.0 (scikit-learn's ``zero_division=0``): a class never predicted has
  precision 0, a class with no examples has recall 0, and F1 is 0 when precision + recall is 0.
  Each class also carries ``support`` (true examples) and ``predicted`` (times predicted), so a
  reader can tell "0 because undefined" from "0 because wrong".
* Mean F1 is the unweighted mean over the classes that have at least one example (support > 0).
  A class absent from the test set says nothing about the model; averaging its conventional 0 in
  would punish the model for the test set's composition. With every class present (as in the
  paper's test sets) this is the ordinary macro F1 of Table 5.
* An image with no prediction (``None``: no result in the database, a failed image) is a false
  negative for its true class and a false positive for no class. It is counted, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chimp_worker.errors import DatasetError

CRYSTALS = "crystals"
NO_CRYSTALS = "no crystals"
BINARY_CLASSES: tuple[str, str] = (CRYSTALS, NO_CRYSTALS)

# The column order of the paper's Table 5; other class names follow in the order given.
PAPER_CLASS_ORDER: tuple[str, ...] = ("crystals", "precipitate", "clear", "other")

# Table 1: the VMXi ten-class scores (by number and by name) mapped to MARCO's four classes,
# spelled as the classifier's ``class_names`` spell them.
VMXI_TO_MARCO: Mapping[str, str] = {
    "0": "clear",
    "clear": "clear",
    "1": "other",
    "contaminated": "other",
    "2": "precipitate",
    "light precipitate": "precipitate",
    "3": "precipitate",
    "heavy precipitate": "precipitate",
    "4": "other",
    "phase separation": "other",
    "5": "other",
    "spherulites": "other",
    "6": "crystals",
    "microcrystals": "crystals",
    "7": "crystals",
    "1d crystals": "crystals",
    "8": "crystals",
    "2d crystals": "crystals",
    "9": "crystals",
    "3d crystals": "crystals",
    # The four target classes map to themselves, so an already-mapped set passes through.
    "crystals": "crystals",
    "precipitate": "precipitate",
    "other": "other",
}

# Named label maps that ``--label-map`` accepts besides a file.
NAMED_LABEL_MAPS: Mapping[str, Mapping[str, str]] = {"table1": VMXI_TO_MARCO}


def normalise_label(label: str) -> str:
    """Labels compare case- and whitespace-insensitively ("3D Crystals" == "3d  crystals")."""
    return " ".join(str(label).split()).casefold()


def map_labels(labels: Iterable[str], mapping: Mapping[str, str]) -> list[str]:
    """Translate each label through ``mapping`` (keys compared by ``normalise_label``).

    Raises ``DatasetError`` naming every label the mapping does not know, because silently
    passing an unmapped label through would score it as a class of its own.
    """
    table = {normalise_label(key): value for key, value in mapping.items()}
    labels = list(labels)
    unknown = sorted({label for label in labels if normalise_label(label) not in table})
    if unknown:
        raise DatasetError(
            f"label map has no entry for {', '.join(repr(u) for u in unknown)}; "
            f"it knows {', '.join(sorted(table))}"
        )
    return [table[normalise_label(label)] for label in labels]


def collapse_to_crystals(labels: Iterable[str]) -> list[str]:
    """Tables 7 and 9: 'crystals' stays, every other class becomes 'no crystals'."""
    return [CRYSTALS if normalise_label(label) == CRYSTALS else NO_CRYSTALS for label in labels]


def order_classes(names: Iterable[str]) -> tuple[str, ...]:
    """The paper's column order for its four classes, then any others in first-seen order."""
    seen = list(dict.fromkeys(names))
    known = [name for name in PAPER_CLASS_ORDER if name in seen]
    return tuple(known + [name for name in seen if name not in PAPER_CLASS_ORDER])


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, with the counts behind them."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images whose true label is this class
    predicted: int  # images predicted as this class
    true_positives: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """Per-class scores, mean F1 and the confusion matrix of one labelled set."""

    classes: tuple[str, ...]
    per_class: tuple[ClassScores, ...]
    mean_f1: float
    accuracy: float
    # confusion[i][j]: images of true class i predicted as class j (rows true, columns predicted)
    confusion: tuple[tuple[int, ...], ...]
    # unpredicted[i]: images of true class i with no prediction at all
    unpredicted: tuple[int, ...]
    images: int

    def scores(self, name: str) -> ClassScores:
        for entry in self.per_class:
            if entry.name == name:
                return entry
        raise KeyError(f"no class {name!r}; classes are {', '.join(self.classes)}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (class order kept in ``classes``)."""
        return {
            "classes": list(self.classes),
            "per_class": {
                entry.name: {
                    "precision": entry.precision,
                    "recall": entry.recall,
                    "f1": entry.f1,
                    "support": entry.support,
                    "predicted": entry.predicted,
                    "true_positives": entry.true_positives,
                }
                for entry in self.per_class
            },
            "mean_f1": self.mean_f1,
            "accuracy": self.accuracy,
            "confusion": {
                "rows": "true class",
                "columns": "predicted class",
                "matrix": [list(row) for row in self.confusion],
                "unpredicted": list(self.unpredicted),
            },
            "images": self.images,
        }


def confusion_matrix(
    true_labels: Sequence[str], predicted_labels: Sequence[str | None], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of (true, predicted) pairs: an int64 (K, K) matrix, rows true and columns
    predicted in the order of ``classes``, and an int64 (K,) vector of images per true class
    that have no prediction (``None``).

    Raises ``DatasetError`` for a length mismatch or a label outside ``classes``.
    """
    if len(true_labels) != len(predicted_labels):
        raise DatasetError(
            f"{len(true_labels)} true labels but {len(predicted_labels)} predictions"
        )
    index = {name: position for position, name in enumerate(classes)}
    if len(index) != len(classes):
        raise DatasetError(f"class names repeat: {list(classes)}")
    outside = sorted(
        {label for label in true_labels if label not in index}
        | {label for label in predicted_labels if label is not None and label not in index}
    )
    if outside:
        raise DatasetError(
            f"labels {', '.join(repr(label) for label in outside)} are not among the classes "
            f"{', '.join(classes)} (use a label map)"
        )
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    unpredicted = np.zeros(len(classes), dtype=np.int64)
    for truth, prediction in zip(true_labels, predicted_labels, strict=True):
        if prediction is None:
            unpredicted[index[truth]] += 1
        else:
            matrix[index[truth], index[prediction]] += 1
    return matrix, unpredicted


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean (eq. 3); 0.0 when both are 0."""
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def classification_metrics(
    true_labels: Sequence[str],
    predicted_labels: Sequence[str | None],
    classes: Sequence[str] | None = None,
) -> ClassificationMetrics:
    """Per-class precision/recall/F1, mean F1, accuracy and confusion matrix.

    ``classes`` fixes the class set and order (so a class with no examples is still reported);
    by default it is every label seen, in the paper's order. ``None`` predictions are images
    without a result (see the module docstring).
    """
    if classes is None:
        seen = [*true_labels, *(p for p in predicted_labels if p is not None)]
        classes = order_classes(seen)
    classes = tuple(classes)
    if not classes:
        raise DatasetError("no labelled images to evaluate")
    matrix, unpredicted = confusion_matrix(true_labels, predicted_labels, classes)
    per_class = []
    for position, name in enumerate(classes):
        true_positives = int(matrix[position, position])
        support = int(matrix[position, :].sum() + unpredicted[position])
        predicted = int(matrix[:, position].sum())
        precision = _ratio(true_positives, predicted)
        recall = _ratio(true_positives, support)
        per_class.append(
            ClassScores(
                name=name,
                precision=precision,
                recall=recall,
                f1=f1_score(precision, recall),
                support=support,
                predicted=predicted,
                true_positives=true_positives,
            )
        )
    present = [entry.f1 for entry in per_class if entry.support > 0]
    images = len(true_labels)
    return ClassificationMetrics(
        classes=classes,
        per_class=tuple(per_class),
        mean_f1=float(np.mean(present)) if present else 0.0,
        accuracy=_ratio(int(np.trace(matrix)), images),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
        unpredicted=tuple(int(v) for v in unpredicted),
        images=images,
    )


def precision_recall_curve(
    scores: Sequence[float], positives: Sequence[bool]
) -> tuple[list[float], list[float]]:
    """(recall, precision) lists after each distinct score threshold, highest score first.

    One-vs-rest for a classifier: ``scores`` are one class's probabilities, ``positives``
    whether each image truly is that class. Tied scores enter together. Empty when there is
    no positive (recall is undefined).
    """
    if len(scores) != len(positives):
        raise DatasetError(f"{len(scores)} scores but {len(positives)} truth values")
    total = int(sum(bool(p) for p in positives))
    if total == 0:
        return [], []
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = np.cumsum(np.asarray(positives, dtype=bool)[order])
    ranks = np.arange(1, len(order) + 1)
    last_of_tie = np.r_[ranked_scores[1:] != ranked_scores[:-1], True]
    recall = (hits[last_of_tie] / total).tolist()
    precision = (hits[last_of_tie] / ranks[last_of_tie]).tolist()
    return recall, precision


def detector_as_classifier(
    true_labels: Sequence[str], crystals_detected: Sequence[int | None]
) -> ClassificationMetrics:
    """Tables 7 and 9: an image is 'crystals' when the detector kept at least one crystal.

    ``true_labels`` may be four-class (collapsed here) or already 'crystals'/'no crystals'.
    ``crystals_detected`` is the number of kept crystal detections per image, or ``None`` when
    the image was not analysed (counted as unpredicted, never as 'no crystals'). An image with
    zero detections is a 'no crystals' prediction.
    """
    truth = collapse_to_crystals(true_labels)
    predicted: list[str | None] = []
    for count in crystals_detected:
        if count is None:
            predicted.append(None)
        elif count < 0:
            raise DatasetError(f"crystal count cannot be negative (got {count})")
        else:
            predicted.append(CRYSTALS if count >= 1 else NO_CRYSTALS)
    return classification_metrics(truth, predicted, classes=BINARY_CLASSES)
