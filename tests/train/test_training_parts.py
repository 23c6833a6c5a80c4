"""The training building blocks: augmentation, splits, balanced sampling, early stopping,
and detector targets built from COCO masks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.coco import load_coco
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.evaluate.mock_dataset import export_mock_dataset
from chimp_worker.models.preprocessing import DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH
from chimp_worker.train.augment import ClassifierAugment, DetectorAugment
from chimp_worker.train.data import (
    DetectorImages,
    class_balanced_sampler,
    detector_samples,
    masks_to_boxes,
    stratified_split,
)
from chimp_worker.train.loop import EarlyStopping
from chimp_worker.train.runner import split_coco

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def test_classifier_augmentation_is_reproducible_from_its_generator() -> None:
    image = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    augment = ClassifierAugment(rotation_p=1.0, distortion_p=1.0, blur_p=1.0, clahe_p=1.0)
    first = augment(image, np.random.default_rng([7, 1, 3]))
    again = augment(image, np.random.default_rng([7, 1, 3]))
    other = augment(image, np.random.default_rng([7, 2, 3]))
    assert first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert sorted(first.shape[:2]) == [40, 50]  # quarter turns may swap the sides


@pytest.mark.parametrize("seed", range(8))
def test_detector_masks_follow_the_image_through_flips_and_rotations(seed: int) -> None:
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    image[10:20, 50:70] = 255  # a bright block, annotated by the mask below
    masks = np.zeros((1, 60, 80), dtype=bool)
    masks[0, 10:20, 50:70] = True
    augment = DetectorAugment(rotation_p=0.5, brightness=0, contrast=0, blur_p=0, sharpen_p=0)
    moved, moved_masks = augment(image, masks, np.random.default_rng(seed))
    bright = moved[:, :, 0] > 127
    overlap = (bright & moved_masks[0]).sum() / (bright | moved_masks[0]).sum()
    assert overlap > 0.9


def test_boxes_enclose_masks_with_exclusive_right_and_bottom_edges() -> None:
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 2:5, 3:8] = True
    assert masks_to_boxes(masks).tolist() == [[3.0, 2.0, 8.0, 5.0]]


def _rows(counts: dict[str, int]) -> list[LabelledImage]:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return [
        LabelledImage(Path(f"{i}.jpg"), label, f"{i}.jpg", i + 2) for i, label in enumerate(labels)
    ]


def test_stratified_split_holds_out_each_class_reproducibly() -> None:
    rows = _rows({"crystals": 50, "clear": 10, "other": 3, "precipitate": 1})
    train, val = stratified_split(rows, 0.2, seed=4)
    assert Counter(r.label for r in val) == {"crystals": 10, "clear": 2, "other": 1}
    assert len(train) + len(val) == len(rows)
    assert {r.source_path for r in train}.isdisjoint({r.source_path for r in val})
    again = stratified_split(rows, 0.2, seed=4)[1]
    assert [r.source_path for r in again] == [r.source_path for r in val]
    with pytest.raises(DatasetError, match="between 0 and 1"):
        stratified_split(rows, 1.5, seed=0)


def test_balanced_sampler_draws_a_rare_class_as_often_as_a_common_one() -> None:
    labels = [0] * 90 + [1] * 10
    sampler = class_balanced_sampler(labels, seed=0, num_samples=20000)
    drawn = Counter(labels[i] for i in sampler)
    assert drawn[1] / 20000 == pytest.approx(0.5, abs=0.02)
    assert list(class_balanced_sampler(labels, seed=1)) == list(class_balanced_sampler(labels, 1))


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0, 0.2)
    assert stopper.update(1, 0.3)
    assert not stopper.update(2, 0.3)  # equal is not better
    assert not stopper.should_stop
    assert not stopper.update(3, 0.1)
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.3, 1)
    assert not EarlyStopping(patience=0).should_stop


def test_coco_split_and_detector_targets_from_exact_masks(tmp_path: Path) -> None:
    exported = export_mock_dataset(
        tmp_path, flavour="xchem", count=5, seed=2, size=(160, 128), outcomes=["crystals"]
    )
    coco = load_coco(exported.annotations)
    train, val = split_coco(coco, 0.4, seed=1)
    assert len(train.images) == 3
    assert len(val.images) == 2
    val_ids = {image["id"] for image in val.images}
    assert all(a["image_id"] in val_ids for a in val.data["annotations"])
    assert len(train.data["annotations"]) + len(val.data["annotations"]) == len(
        coco.data["annotations"]
    )

    # VMXi detector: background, crystal -- drop annotations are left out, as in the paper
    samples, skipped = detector_samples(coco, ("background", "crystal"))
    assert skipped == {"drop": 5}
    assert sum(len(s.labels) for s in samples) == exported.crystals
    assert all(set(s.labels.tolist()) <= {1} for s in samples)
    # XChem detector: background, drop, crystal
    samples, skipped = detector_samples(coco, ("background", "drop", "crystal"))
    assert skipped == {}
    image, target = DetectorImages(coco, samples)[0]
    assert tuple(image.shape) == (3, DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH)
    assert float(image.min()) == 0.0
    assert float(image.max()) == 1.0
    count = len(samples[0].labels)
    assert tuple(target["masks"].shape) == (count, DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH)
    assert target["labels"].tolist() == samples[0].labels.tolist()
    assert target["labels"].tolist()[0] == 1  # the drop comes first
    drop_box = target["boxes"][0].tolist()
    scale_x, scale_y = DETECTOR_INPUT_WIDTH / 160, DETECTOR_INPUT_HEIGHT / 128
    x0, y0, _w, h = coco.data["annotations"][0]["bbox"]
    assert drop_box[0] == pytest.approx(x0 * scale_x, abs=scale_x)
    assert drop_box[3] == pytest.approx((y0 + h) * scale_y, abs=scale_y)
