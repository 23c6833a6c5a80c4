"""Detector mAP through pycocotools on tiny ground truths whose answers are known by hand.

COCO interpolates precision at 101 recall points (0, 0.01, ..., 1). One of two objects found
with nothing ranked above it gives precision 1 for recall 0..0.5: AP = 51/101.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chimp_worker.analysis import Detection, MaskCrop
from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.coco import (
    CocoDataset,
    detection_results,
    evaluate_detections,
    load_coco,
)

# pycocotools' RLE decode trips numpy 2's __array__ copy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

HALF_RECALL_AP = 51 / 101


def square(x: int, y: int, size: int) -> list[float]:
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def write_coco(tmp_path: Path, annotations: list[dict[str, Any]], images: int = 2) -> Path:
    data = {
        "images": [
            {"id": n, "file_name": f"{n}.jpg", "width": 120, "height": 100}
            for n in range(1, images + 1)
        ],
        "categories": [{"id": 1, "name": "crystal"}, {"id": 2, "name": "drop"}],
        "annotations": annotations,
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def crystal(image_id: int, x: int, y: int, size: int) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "category_id": 1,
        "bbox": [x, y, size, size],
        "segmentation": [square(x, y, size)],
    }


def mask_of(dataset: CocoDataset, annotation_index: int) -> np.ndarray:
    """The ground-truth mask itself, so a 'perfect' prediction has IoU exactly 1."""
    from pycocotools import mask as mask_utils

    annotation = dataset.data["annotations"][annotation_index]
    rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], 100, 120))
    return mask_utils.decode(rle).astype(bool)


def detection(box: tuple[float, float, float, float], score: float, mask: np.ndarray) -> Detection:
    return Detection(
        label="crystal",
        score=score,
        box=box,
        mask=MaskCrop.from_full(mask),
        mask_area=int(mask.sum()),
        centroid=None,
    )


@pytest.fixture
def two_crystals(tmp_path: Path) -> CocoDataset:
    return load_coco(write_coco(tmp_path, [crystal(1, 10, 10, 20), crystal(2, 50, 50, 20)]))


def test_one_of_two_crystals_found_and_an_image_without_predictions(
    two_crystals: CocoDataset,
) -> None:
    perfect = detection((10, 10, 30, 30), 0.9, mask_of(two_crystals, 0))
    results = detection_results(1, [perfect], two_crystals.categories)  # image 2: nothing
    evaluation = evaluate_detections(two_crystals, results, categories=["crystal"])
    for iou_type in ("bbox", "segm"):
        scores = evaluation.score(iou_type)
        assert scores.ap50 == pytest.approx(HALF_RECALL_AP)
        assert scores.ap75 == pytest.approx(HALF_RECALL_AP)
        assert scores.ap == pytest.approx(HALF_RECALL_AP)
        assert scores.ap_small == pytest.approx(HALF_RECALL_AP)  # 20x20 = 400 px < 32x32
        assert scores.ap_medium is None  # no medium objects: pycocotools' -1
        assert scores.ar_max == pytest.approx(0.5)
    curve = next(c for c in evaluation.curves if c.iou_type == "bbox" and c.iou == 0.5)
    assert curve.precision[:51] == pytest.approx((1.0,) * 51)
    assert curve.precision[51:] == pytest.approx((0.0,) * 50)


def test_a_higher_scored_false_alarm_halves_precision(two_crystals: CocoDataset) -> None:
    perfect = detection((10, 10, 30, 30), 0.9, mask_of(two_crystals, 0))
    wrong = np.zeros((100, 120), dtype=bool)
    wrong[80:90, 100:110] = True
    false_alarm = detection((100, 80, 110, 90), 0.95, wrong)
    results = detection_results(1, [perfect], two_crystals.categories)
    results += detection_results(2, [false_alarm], two_crystals.categories)
    scores = evaluate_detections(two_crystals, results, categories=["crystal"]).score("bbox")
    # ranked: false alarm (P=0), then the hit (P=1/2 at recall 1/2)
    assert scores.ap50 == pytest.approx(0.5 * HALF_RECALL_AP)


def test_a_loose_box_counts_at_iou_half_but_not_at_three_quarters(tmp_path: Path) -> None:
    dataset = load_coco(write_coco(tmp_path, [crystal(1, 10, 10, 20)], images=1))
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:40, 10:30] = True
    loose = detection((10, 10, 30, 40), 0.8, mask)  # 20x30 box around a 20x20 object: IoU 2/3
    results = detection_results(1, [loose], dataset.categories)
    scores = evaluate_detections(dataset, results, categories=["crystals"], iou_types=["bbox"])
    only = scores.score("bbox")
    assert only.ap50 == pytest.approx(1.0)
    assert only.ap75 == pytest.approx(0.0)
    assert only.ap == pytest.approx(0.4)  # matched at IoU 0.50, 0.55, 0.60, 0.65 of ten


def test_no_predictions_at_all_scores_zero(two_crystals: CocoDataset) -> None:
    evaluation = evaluate_detections(two_crystals, [], categories=["crystal"])
    assert evaluation.score("segm").ap == 0.0
    assert evaluation.predictions == 0


def test_two_categories_give_a_mean_and_one_row_each(tmp_path: Path) -> None:
    drop = {"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 90], "iscrowd": 0, "area": 9000}
    dataset = load_coco(write_coco(tmp_path, [crystal(1, 10, 10, 20), drop], images=1))
    perfect = detection((10, 10, 30, 30), 0.9, mask_of(dataset, 0))
    results = detection_results(1, [perfect], dataset.categories)
    evaluation = evaluate_detections(dataset, results, iou_types=["bbox"])
    assert evaluation.score("bbox", "crystal").ap == pytest.approx(1.0)
    assert evaluation.score("bbox", "drop").ap == pytest.approx(0.0)
    assert evaluation.score("bbox", "all").ap == pytest.approx(0.5)


def test_detections_of_labels_not_annotated_are_left_out(two_crystals: CocoDataset) -> None:
    drop = Detection("drop", 0.99, (0, 0, 10, 10), None, 0, None)
    assert detection_results(1, [drop], {"crystal": 1}) == []


def test_ground_truth_counts_crystals_per_image(tmp_path: Path) -> None:
    dataset = load_coco(write_coco(tmp_path, [crystal(1, 10, 10, 20), crystal(1, 50, 50, 5)]))
    assert dataset.crystal_counts() == {1: 2, 2: 0}
    assert dataset.data["annotations"][0]["area"] == pytest.approx(400, abs=25)
    assert dataset.image_path(dataset.images[0]) == tmp_path.resolve() / "1.jpg"


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}, "unknown image_id 9"),
        ({"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}, "unknown category_id 7"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}, "bbox"),
        (
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": [[1, 2]]},
            "malformed segmentation",
        ),
    ],
)
def test_bad_annotations_are_refused_with_the_reason(
    tmp_path: Path, annotation: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        load_coco(write_coco(tmp_path, [annotation]))


def test_a_missing_or_non_json_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not readable JSON"):
        load_coco(tmp_path / "bad.json")


def test_unknown_categories_are_refused(two_crystals: CocoDataset) -> None:
    with pytest.raises(DatasetError, match="categories spot"):
        evaluate_detections(two_crystals, [], categories=["spot"])
