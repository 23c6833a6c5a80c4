"""Detector post-processing on hand-made model outputs, and the score-threshold shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chimp_worker.analysis import TargetRule
from chimp_worker.models.detector import (
    build_detector,
    detections_from_output,
    label_names,
    model_score_threshold,
)

XCHEM_LABELS = label_names(3)


def model_output(
    boxes: list[list[float]], scores: list[float], labels: list[int], masks: list[np.ndarray]
) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
    }


def probability_map(rows: slice, cols: slice, inside: float = 0.9) -> np.ndarray:
    """A 1352 x 1688 mask-probability map: ``inside`` on a rectangle, 0.1 elsewhere."""
    array = np.full((1352, 1688), 0.1, np.float32)
    array[rows, cols] = inside
    return array


def test_kept_detections_are_scaled_back_to_the_original_image() -> None:
    output = model_output(
        boxes=[[400.0, 200.0, 600.0, 400.0], [10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]],
        scores=[0.95, 0.6, 0.5999],
        labels=[2, 1, 2],
        masks=[
            probability_map(slice(200, 400), slice(400, 600)),
            probability_map(slice(20, 40), slice(10, 30)),
            probability_map(slice(0, 5), slice(0, 5)),
        ],
    )
    # The original is half the model's input size in each direction: 844 x 676.
    detections = detections_from_output(
        output,
        original_height=676,
        original_width=844,
        labels=XCHEM_LABELS,
        score_threshold=0.6,
        mask_threshold=0.5,
        model_role="xchem_detector",
    )
    assert [d.label for d in detections] == ["crystal", "drop"]  # 0.5999 dropped, 0.6 kept
    first = detections[0]
    assert first.box == pytest.approx((200.0, 100.0, 300.0, 200.0))
    assert first.mask is not None
    assert first.mask.frame == (676, 844)
    # Model rows 200-399 -> original rows 100-199 exactly (a 2x bilinear shrink averages pairs).
    rows, cols = np.nonzero(first.mask.full())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (100, 199, 200, 299)
    assert first.mask_area == 100 * 100
    # Published rule: model centre (row 299.5, col 499.5) -> (300, 500) -> x 250, y 150.
    assert first.centroid == (250, 150)
    assert first.model_mask is not None
    assert np.array_equal(
        first.model_mask.full(), probability_map(slice(200, 400), slice(400, 600)) > 0.5
    )
    assert first.score == pytest.approx(0.95)
    assert first.model_role == "xchem_detector"


def test_unequal_scaling_in_x_and_y_is_kept_apart() -> None:
    # VMXi's 2532 x 2028 is 1.5 x the model input in both directions; use 3376 x 1352 instead:
    # x doubles, y stays.
    output = model_output(
        [[100.0, 50.0, 200.0, 150.0]],
        [0.9],
        [1],
        [probability_map(slice(50, 150), slice(100, 200))],
    )
    (detection,) = detections_from_output(
        output,
        original_height=1352,
        original_width=3376,
        labels=label_names(2),
        score_threshold=0.6,
        mask_threshold=0.5,
    )
    assert detection.box == pytest.approx((200.0, 50.0, 400.0, 150.0))
    assert detection.centroid == (300, 100)
    assert detection.label == "crystal"


def crystal_output(rows: slice, cols: slice) -> dict[str, torch.Tensor]:
    box = [float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)]
    return model_output([box], [0.9], [1], [probability_map(rows, cols)])


def vmxi_centroid(output: dict[str, torch.Tensor], rule: TargetRule) -> tuple[int, int] | None:
    (detection,) = detections_from_output(
        output,
        original_height=2028,
        original_width=2532,
        labels=label_names(2),
        score_threshold=0.6,
        mask_threshold=0.5,
        target_rule=rule,
    )
    return detection.centroid


def test_published_rounds_at_the_model_input_and_original_after_resizing() -> None:
    # A VMXi crystal (2532 x 2028 = 1.5 x 1688 x 1352) on model rows 10-11, columns 100-101.
    output = crystal_output(slice(10, 12), slice(100, 102))
    # Published: centre (row 10.5, col 100.5) -> rint, halves to even -> (10, 100)
    # -> x 100 * 1.5 = 150, y 10 * 1.5 = 15.
    assert vmxi_centroid(output, TargetRule.PUBLISHED) == (150, 15)
    # Original: bilinear (half-pixel centres) samples model row (i + 0.5) / 1.5 - 0.5; 0.9 inside
    # and 0.1 outside cross 0.5 half a pixel out, so rows with 9.5 < that < 11.5 are kept:
    # 14.5 < i < 17.5 -> rows 15-17, centre 16; likewise columns 150-152, centre 151.
    assert vmxi_centroid(output, TargetRule.ORIGINAL) == (151, 16)


def test_the_default_rule_is_the_published_one() -> None:
    output = crystal_output(slice(10, 12), slice(100, 102))
    (detection,) = detections_from_output(
        output,
        original_height=2028,
        original_width=2532,
        labels=label_names(2),
        score_threshold=0.6,
        mask_threshold=0.5,
    )
    assert detection.centroid == (150, 15)


def test_the_published_rule_keeps_x_and_y_apart_under_unequal_scaling() -> None:
    # 3376 x 1352: x doubles, y stays. Model rows 11-14 (centre 12.5 -> 12), columns 101-104
    # (centre 102.5 -> 102 -> 204). The original rule: rows 11-14 unchanged, centre 12.5
    # rounded up -> 13; columns 202-209, centre 205.5 -> 206.
    output = crystal_output(slice(11, 15), slice(101, 105))
    kwargs = {
        "original_height": 1352,
        "original_width": 3376,
        "labels": label_names(2),
        "score_threshold": 0.6,
        "mask_threshold": 0.5,
    }
    (published,) = detections_from_output(output, **kwargs, target_rule=TargetRule.PUBLISHED)
    (original,) = detections_from_output(output, **kwargs, target_rule=TargetRule.ORIGINAL)
    assert published.centroid == (204, 12)
    assert original.centroid == (206, 13)


def test_mask_probability_must_exceed_the_mask_threshold() -> None:
    output = model_output(
        [[0.0, 0.0, 100.0, 100.0]],
        [0.9],
        [1],
        [probability_map(slice(0, 100), slice(0, 100), inside=0.5)],
    )
    (detection,) = detections_from_output(
        output,
        original_height=1352,
        original_width=1688,
        labels=label_names(2),
        score_threshold=0.6,
        mask_threshold=0.5,
    )
    assert detection.mask_area == 0
    assert detection.centroid is None


def test_no_detection_above_the_threshold_gives_an_empty_list() -> None:
    output = model_output(
        [[0.0, 0.0, 9.0, 9.0]], [0.3], [1], [probability_map(slice(0, 9), slice(0, 9))]
    )
    assert (
        detections_from_output(
            output,
            original_height=100,
            original_width=100,
            labels=label_names(2),
            score_threshold=0.6,
            mask_threshold=0.5,
        )
        == []
    )


def test_the_model_threshold_keeps_exactly_the_scores_at_or_above_the_final_one() -> None:
    inside = model_score_threshold(0.6)
    below = float(np.nextafter(np.float32(0.6), np.float32(0)))
    scores = torch.tensor([0.6, below, 0.61], dtype=torch.float32)
    assert (scores > inside).tolist() == (scores >= 0.6).tolist() == [True, False, True]


@pytest.mark.parametrize("seed", range(12))
def test_filtering_scores_before_nms_leaves_the_same_detections(seed: int) -> None:
    """torchvision's post-processing at 0.05 followed by a 0.6 filter (the published way)
    equals post-processing at the final threshold inside the model, on crowded random boxes."""
    generator = torch.Generator().manual_seed(seed)
    roi_heads = build_detector(3, detections_per_img=100).roi_heads
    count = 3000 if seed % 3 == 0 else 400  # 3000: over the 100-detection cap
    centres = torch.rand(count, 2, generator=generator) * torch.tensor([120.0, 90.0])
    sizes = 20 + torch.rand(count, 2, generator=generator) * 80
    proposals = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).clamp(0, 320)
    class_logits = torch.randn(count, 3, generator=generator)
    box_regression = torch.randn(count, 12, generator=generator) * 0.3
    image_shapes = [(240, 320)]

    roi_heads.score_thresh = 0.05
    ref_boxes, ref_scores, ref_labels = (
        item[0]
        for item in roi_heads.postprocess_detections(
            class_logits, box_regression, [proposals], image_shapes
        )
    )
    kept = ref_scores >= 0.6
    roi_heads.score_thresh = model_score_threshold(0.6)
    boxes, scores, labels = (
        item[0]
        for item in roi_heads.postprocess_detections(
            class_logits, box_regression, [proposals], image_shapes
        )
    )
    assert kept.sum() > 5
    if count == 400:  # the reference really had detections below 0.6 to throw away
        assert len(ref_scores) > int(kept.sum())
    else:  # more than 100 survive either way: the cap keeps the same top 100
        assert len(scores) == 100
    assert torch.equal(boxes, ref_boxes[kept])
    assert torch.equal(scores, ref_scores[kept])
    assert torch.equal(labels, ref_labels[kept])


@pytest.mark.parametrize(
    ("height", "width"), [(2028, 2532), (1024, 1224), (1352, 1688), (1352, 3376)]
)
def test_resizing_only_around_the_box_equals_resizing_the_whole_map(
    height: int, width: int
) -> None:
    """The windowed resize must give OpenCV's whole-image bilinear resize, pixel for pixel
    (up to values within float rounding of the threshold)."""
    import cv2
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from chimp_worker.models.masks import resize_probability_to_mask

    generator = torch.Generator().manual_seed(height)
    boxes = torch.tensor(
        [[100.5, 200.25, 420.0, 330.75], [0.0, 0.0, 60.0, 1351.0], [1500.0, 1200.0, 1687.0, 1351.0]]
    )
    small = torch.rand(3, 1, 28, 28, generator=generator)
    pasted = paste_masks_in_image(small, boxes, (1352, 1688))[:, 0].numpy()
    for probability, box in zip(pasted, boxes.numpy(), strict=True):
        whole = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
        expected = whole > 0.5
        crop, (top, left) = resize_probability_to_mask(probability, box, height, width, 0.5)
        got = np.zeros((height, width), bool)
        got[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        differing = got != expected
        assert expected.sum() > 100
        assert np.abs(whole[differing] - 0.5).max(initial=0.0) < 1e-5
        assert differing.sum() <= 3


def test_pasting_kept_masks_around_their_boxes_equals_torchvisions_full_paste() -> None:
    """``detections_from_output`` on the mask head's 28 x 28 probabilities gives the same
    masks, areas and centroids, bit for bit, as on torchvision's full-size pasted maps: boxes
    inside, across every edge of the 1352 x 1688 input, tiny, and one of a single pixel."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    generator = torch.Generator().manual_seed(7)
    boxes = torch.tensor(
        [
            [100.5, 200.25, 420.0, 330.75],
            [-3.0, -2.5, 60.0, 1351.0],
            [1500.0, 1200.0, 1687.9, 1351.9],
            [800.2, 600.7, 803.1, 602.2],
            [1687.0, 40.0, 1688.0, 41.0],
            [0.0, 0.0, 1688.0, 1352.0],
        ]
    )
    count = len(boxes)
    small = torch.rand(count, 1, 28, 28, generator=generator)
    small[:, :, 8:20, 8:20] += 0.6  # a solid core, so every mask has pixels over 0.5
    base = {
        "boxes": boxes,
        "scores": torch.linspace(0.99, 0.61, count),
        "labels": torch.tensor([1, 2] * (count // 2)),
    }
    for height, width in [(2028, 2532), (1352, 1688), (676, 844)]:
        kwargs = {
            "original_height": height,
            "original_width": width,
            "labels": XCHEM_LABELS,
            "score_threshold": 0.6,
            "mask_threshold": 0.5,
        }
        pasted = paste_masks_in_image(small.clone(), boxes, (1352, 1688))
        for rule in TargetRule:
            reference = detections_from_output(
                {**base, "masks": pasted}, **kwargs, target_rule=rule
            )
            windowed = detections_from_output(
                {**base, "masks": small.clone()}, **kwargs, target_rule=rule
            )
            assert len(windowed) == len(reference) == count
            for index, (fast, slow) in enumerate(zip(windowed, reference, strict=True)):
                assert fast.mask_area == slow.mask_area
                assert fast.centroid == slow.centroid
                assert fast.box == slow.box
                assert np.array_equal(fast.mask.full(), slow.mask.full())  # type: ignore[union-attr]
                # The model-input mask is torchvision's pasted map thresholded, bit for bit.
                expected = pasted[index, 0].numpy() > 0.5
                assert np.array_equal(fast.model_mask.full(), expected)  # type: ignore[union-attr]
                assert np.array_equal(slow.model_mask.full(), expected)  # type: ignore[union-attr]
            assert sum(d.mask_area > 0 for d in windowed) >= count - 1  # a 1-px box may vanish
