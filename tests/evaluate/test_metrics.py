"""Classification metrics against values computed by hand on tiny label sets."""

from __future__ import annotations

import pytest

from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.metrics import (
    VMXI_TO_MARCO,
    classification_metrics,
    collapse_to_crystals,
    confusion_matrix,
    detector_as_classifier,
    f1_score,
    map_labels,
    order_classes,
)

FOUR = ("crystals", "precipitate", "clear", "other")

# Seven images; image 2 has no prediction (e.g. it failed in the worker).
TRUE = ["crystals", "crystals", "crystals", "precipitate", "precipitate", "clear", "other"]
PRED = ["crystals", "precipitate", None, "precipitate", "crystals", "clear", "clear"]


def test_per_class_precision_recall_f1_match_hand_computed_values() -> None:
    metrics = classification_metrics(TRUE, PRED, classes=FOUR)
    crystals = metrics.scores("crystals")
    # TP 1; predicted twice (images 0, 4); three true crystals (one unpredicted).
    assert (crystals.true_positives, crystals.predicted, crystals.support) == (1, 2, 3)
    assert crystals.precision == pytest.approx(1 / 2)
    assert crystals.recall == pytest.approx(1 / 3)
    assert crystals.f1 == pytest.approx(0.4)
    precipitate = metrics.scores("precipitate")
    assert (precipitate.precision, precipitate.recall, precipitate.f1) == pytest.approx(
        (0.5, 0.5, 0.5)
    )
    clear = metrics.scores("clear")
    assert (clear.precision, clear.recall, clear.f1) == pytest.approx((0.5, 1.0, 2 / 3))
    other = metrics.scores("other")  # never predicted: precision 0 by convention
    assert (other.precision, other.recall, other.f1, other.predicted) == (0.0, 0.0, 0.0, 0)
    assert metrics.mean_f1 == pytest.approx((0.4 + 0.5 + 2 / 3 + 0.0) / 4)
    assert metrics.accuracy == pytest.approx(3 / 7)
    assert metrics.images == 7


def test_confusion_matrix_has_true_rows_predicted_columns_and_counts_unpredicted() -> None:
    metrics = classification_metrics(TRUE, PRED, classes=FOUR)
    assert metrics.confusion == (
        (1, 1, 0, 0),
        (1, 1, 0, 0),
        (0, 0, 1, 0),
        (0, 0, 1, 0),
    )
    assert metrics.unpredicted == (1, 0, 0, 0)
    data = metrics.as_dict()
    assert data["confusion"]["matrix"][0] == [1, 1, 0, 0]
    assert data["per_class"]["clear"]["recall"] == 1.0


def test_a_class_with_no_examples_scores_zero_and_is_left_out_of_mean_f1() -> None:
    metrics = classification_metrics(
        ["crystals", "clear"],
        ["other", "clear"],
        classes=("crystals", "precipitate", "clear", "other"),
    )
    other = metrics.scores("other")
    assert (other.support, other.predicted, other.precision, other.recall, other.f1) == (
        0,
        1,
        0.0,
        0.0,
        0.0,
    )
    assert metrics.scores("precipitate").support == 0
    assert metrics.scores("crystals").f1 == 0.0
    assert metrics.scores("clear").f1 == 1.0
    # Mean over crystals and clear only: the two classes that have examples.
    assert metrics.mean_f1 == pytest.approx(0.5)


def test_perfect_predictions_give_ones_everywhere() -> None:
    labels = ["clear", "crystals", "other", "precipitate", "crystals"]
    metrics = classification_metrics(labels, labels)
    assert metrics.classes == FOUR
    assert all(e.f1 == 1.0 and e.precision == 1.0 and e.recall == 1.0 for e in metrics.per_class)
    assert metrics.mean_f1 == 1.0
    assert metrics.accuracy == 1.0


def test_labels_outside_the_classes_are_refused_by_name() -> None:
    with pytest.raises(DatasetError, match="'Spherulites'"):
        confusion_matrix(["Spherulites"], ["other"], FOUR)
    with pytest.raises(DatasetError, match="2 true labels but 1 predictions"):
        confusion_matrix(["clear", "clear"], ["clear"], FOUR)


def test_f1_is_zero_when_precision_and_recall_are_zero() -> None:
    assert f1_score(0.0, 0.0) == 0.0
    assert f1_score(1.0, 0.5) == pytest.approx(2 / 3)


def test_table1_maps_every_vmxi_score_and_name_to_the_four_marco_classes() -> None:
    scores = [str(n) for n in range(10)]
    assert map_labels(scores, VMXI_TO_MARCO) == [
        "clear",
        "other",
        "precipitate",
        "precipitate",
        "other",
        "other",
        "crystals",
        "crystals",
        "crystals",
        "crystals",
    ]
    names = ["Clear", "Contaminated", "Light Precipitate", "Heavy  precipitate", "Phase Separation"]
    names += ["Spherulites", "Microcrystals", "1D Crystals", "2D Crystals", "3D crystals"]
    assert map_labels(names, VMXI_TO_MARCO) == map_labels(scores, VMXI_TO_MARCO)


def test_label_map_names_every_unknown_label() -> None:
    with pytest.raises(DatasetError, match=r"'Skin'.*'Unknown'"):
        map_labels(["Clear", "Unknown", "Skin"], VMXI_TO_MARCO)


def test_paper_class_order_comes_first() -> None:
    assert order_classes(["other", "foo", "clear", "crystals"]) == (
        "crystals",
        "clear",
        "other",
        "foo",
    )
    assert collapse_to_crystals(["Crystals", "clear", "other"]) == [
        "crystals",
        "no crystals",
        "no crystals",
    ]


def test_detector_as_classifier_counts_an_image_without_detections_as_no_crystals() -> None:
    truth = ["crystals", "crystals", "clear", "precipitate", "other"]
    # image 1 has zero detections; image 4 was never analysed
    metrics = detector_as_classifier(truth, [3, 0, 1, 0, None])
    assert metrics.classes == ("crystals", "no crystals")
    crystals = metrics.scores("crystals")
    assert (crystals.precision, crystals.recall, crystals.f1) == pytest.approx((0.5, 0.5, 0.5))
    none = metrics.scores("no crystals")
    assert (none.true_positives, none.predicted, none.support) == (1, 2, 3)
    assert (none.precision, none.recall, none.f1) == pytest.approx((0.5, 1 / 3, 0.4))
    assert metrics.unpredicted == (0, 1)
    assert metrics.confusion == ((1, 1), (1, 1))


def test_detector_as_classifier_reproduces_the_formulas_behind_table7() -> None:
    """Counts chosen to reproduce Table 7 (VMXi detector, set U) to the paper's four places:
    145 crystal images of 632, 137 found, 191 false alarms."""
    truth = ["crystals"] * 145 + ["clear"] * (632 - 145)
    counts = [1] * 137 + [0] * 8 + [2] * 191 + [0] * (632 - 145 - 191)
    metrics = detector_as_classifier(truth, counts)
    crystals = metrics.scores("crystals")
    assert round(crystals.precision, 4) == 0.4177
    assert round(crystals.recall, 4) == 0.9448
    assert round(crystals.f1, 4) == 0.5793
    no_crystals = metrics.scores("no crystals")
    assert round(no_crystals.precision, 4) == 0.9737
    assert round(no_crystals.recall, 4) == 0.6078
    assert round(no_crystals.f1, 4) == 0.7484


def test_precision_recall_curve_steps_through_thresholds_with_ties_together() -> None:
    from chimp_worker.evaluate.metrics import precision_recall_curve

    recall, precision = precision_recall_curve([0.9, 0.8, 0.8, 0.3], [True, False, True, False])
    # thresholds 0.9 -> 1 hit of 1; 0.8 (tie) -> 2 hits of 3; 0.3 -> 2 hits of 4
    assert recall == [0.5, 1.0, 1.0]
    assert precision == pytest.approx([1.0, 2 / 3, 0.5])
    assert precision_recall_curve([0.1], [False]) == ([], [])
