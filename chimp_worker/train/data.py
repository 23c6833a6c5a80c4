"""Training data: labelled images for the classifier, COCO instances for the detectors.

Images are decoded as the worker decodes them (``images.decode_image``) and fed through the
worker's own preprocessing (``models.preprocessing``), so a model learns from exactly the
inputs it will see in production. Augmentation happens on the uint8 image before that.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from chimp_worker.errors import DatasetError, ImageError
from chimp_worker.evaluate.classifier import read_image
from chimp_worker.evaluate.coco import CocoDataset, canonical_category, segmentation_to_rle
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.models.preprocessing import (
    DETECTOR_INPUT_HEIGHT,
    DETECTOR_INPUT_WIDTH,
    as_rgb,
    classifier_input,
    detector_input,
    longest_side_size,
)
from chimp_worker.train.augment import ClassifierAugment, DetectorAugment


def stratified_split(
    rows: Sequence[LabelledImage], fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation): ``fraction`` of each class to validation, at least one image of
    every class that has two or more, chosen reproducibly from ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {fraction}")
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_class[row.label].append(index)
    rng = np.random.default_rng(seed)
    validation: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        validation.update(int(i) for i in rng.choice(members, size=count, replace=False))
    train = [row for i, row in enumerate(rows) if i not in validation]
    held = [row for i, row in enumerate(rows) if i in validation]
    if not held:
        raise DatasetError("too few images to hold any out for validation; give --val")
    return train, held


def class_balanced_sampler(
    labels: Sequence[int], seed: int, num_samples: int | None = None
) -> WeightedRandomSampler:
    """Draw classes in inverse proportion to their frequency (the paper's oversampling)."""
    counts = Counter(labels)
    weights = [1.0 / counts[label] for label in labels]  # the sampler makes a double tensor
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        weights, num_samples or len(labels), replacement=True, generator=generator
    )


def _read_pixels(row_path: Any, max_pixels: int) -> np.ndarray:
    try:
        return read_image(row_path, max_pixels).pixels
    except ImageError as exc:
        raise DatasetError(f"training image cannot be used: {exc}") from None


class ClassifierImages(Dataset):
    """(input tensor (3, S, S), class index) pairs; images kept resized to S in memory.

    Keeping the S-sized uint8 image (not the decoded original) makes every epoch after the
    first cheap; the cost is S * S * 3 bytes per image (768 KiB at 512).
    """

    def __init__(
        self,
        rows: Sequence[LabelledImage],
        class_names: Sequence[str],
        input_size: int,
        *,
        augment: ClassifierAugment | None = None,
        seed: int = 0,
        max_pixels: int = 40_000_000,
    ) -> None:
        index = {name: n for n, name in enumerate(class_names)}
        unknown = sorted({row.label for row in rows} - set(index))
        if unknown:
            raise DatasetError(
                f"labels {unknown} are not classifier classes {list(class_names)}; "
                "use --label-map (e.g. table1)"
            )
        self.rows = list(rows)
        self.labels = [index[row.label] for row in rows]
        self.input_size = input_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.max_pixels = max_pixels
        self._cache: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Augmentations differ per epoch but are reproducible for a given (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def resized(self, item: int) -> np.ndarray:
        if item not in self._cache:
            pixels = as_rgb(_read_pixels(self.rows[item].path, self.max_pixels))
            height, width = pixels.shape[:2]
            new_height, new_width = longest_side_size(height, width, self.input_size)
            if (new_height, new_width) != (height, width):
                # exactly classifier_input's resize, so training sees the worker's pixels
                pixels = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
            self._cache[item] = pixels
        return self._cache[item]

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        pixels = self.resized(item)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, item])
            pixels = self.augment(pixels, rng)
        return torch.from_numpy(classifier_input(pixels, self.input_size)), self.labels[item]


@dataclass(frozen=True)
class DetectorSample:
    """One COCO image's instances, in original-image pixels."""

    image: dict[str, Any]
    masks: np.ndarray  # bool (N, H, W)
    labels: np.ndarray  # int64 (N,) model class indices (1..C-1)


def detector_samples(
    coco: CocoDataset, label_names: Sequence[str]
) -> tuple[list[DetectorSample], dict[str, int]]:
    """Instances per image for a detector whose class ``n`` is ``label_names[n]``.

    Annotations of categories the detector does not have (drops for the VMXi detector) are
    left out, as the paper trained the VMXi detector on crystals only; returned are the samples
    and the count of annotations left out per category. An annotation without a segmentation
    is refused: Mask R-CNN learns masks.
    """
    model_index = {name: n for n, name in enumerate(label_names) if name != "background"}
    category_names = {int(c["id"]): canonical_category(c["name"]) for c in coco.data["categories"]}
    if not set(category_names.values()) & set(model_index):
        raise DatasetError(
            f"none of the annotation categories {sorted(set(category_names.values()))} is a "
            f"detector class ({', '.join(model_index)})"
        )
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in coco.data["annotations"]:
        by_image[int(annotation["image_id"])].append(annotation)
    skipped: Counter[str] = Counter()
    samples = []
    for image in coco.images:
        height, width = int(image["height"]), int(image["width"])
        masks, labels = [], []
        for annotation in by_image[int(image["id"])]:
            name = category_names[int(annotation["category_id"])]
            if name not in model_index or annotation.get("iscrowd"):
                skipped[name] += 1
                continue
            segmentation = annotation.get("segmentation")
            if not segmentation:
                raise DatasetError(
                    f"annotation {annotation['id']} on image {image['id']} has no segmentation; "
                    "Mask R-CNN training needs polygon or RLE masks"
                )
            from pycocotools import mask as mask_utils

            mask = mask_utils.decode(segmentation_to_rle(segmentation, height, width)).astype(bool)
            if mask.any():
                masks.append(mask)
                labels.append(model_index[name])
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        samples.append(DetectorSample(image, stacked, np.asarray(labels, dtype=np.int64)))
    return samples, dict(skipped)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy boxes enclosing each mask, right/bottom edges exclusive."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for n, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[n] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class DetectorImages(Dataset):
    """(input tensor (3, 1352, 1688) in 0..1, torchvision target) pairs.

    The image is resized to the detector's 1688 x 1352 input first (masks with it), then
    augmented, then preprocessed exactly as at inference (CLAHE, min-max scaling). Training
    draws the CLAHE clip limit from [1, 4] as the reference tooling did; validation pins it.
    """

    def __init__(
        self,
        coco: CocoDataset,
        samples: Sequence[DetectorSample],
        *,
        augment: DetectorAugment | None = None,
        clahe_clip_limit: float = 2.0,
        random_clip: tuple[float, float] | None = (1.0, 4.0),
        seed: int = 0,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.coco = coco
        self.samples = list(samples)
        self.augment = augment
        self.clahe_clip_limit = clahe_clip_limit
        self.random_clip = random_clip if augment is not None else None
        self.seed = seed
        self.epoch = 0
        self.max_pixels = max_pixels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[item]
        pixels = as_rgb(_read_pixels(self.coco.image_path(sample.image), self.max_pixels))
        expected = (int(sample.image["height"]), int(sample.image["width"]))
        if pixels.shape[:2] != expected:
            raise DatasetError(
                f"{self.coco.image_path(sample.image)} is {pixels.shape[1]} x {pixels.shape[0]}"
                f" but the annotations say {expected[1]} x {expected[0]}"
            )
        size = (DETECTOR_INPUT_WIDTH, DETECTOR_INPUT_HEIGHT)
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        masks = (
            np.stack(
                [
                    cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
                    for m in sample.masks
                ]
            ).astype(bool)
            if len(sample.masks)
            else np.zeros((0, size[1], size[0]), dtype=bool)
        )
        rng = np.random.default_rng([self.seed, self.epoch, item])
        if self.augment is not None:
            pixels, masks = self.augment(pixels, masks, rng)
        clip = self.clahe_clip_limit
        if self.random_clip is not None:
            clip = float(rng.uniform(*self.random_clip))
        keep = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
        masks = masks[keep]
        target = {
            "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
            "labels": torch.from_numpy(sample.labels[keep]),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
        }
        return torch.from_numpy(detector_input(pixels, clip)), target


def image_counts(labels: Sequence[str]) -> Mapping[str, int]:
    return dict(sorted(Counter(labels).items()))
