"""ChimpAnalyser end to end on rendered micrographs with test-built weight files.

One batch (an XChem RGB image and a VMXi greyscale image, all three models) is analysed once
per module; the tests then check every part of the result against an independent computation
from the same pieces. The test images are the ones the helper calibrated the detectors on, so
both detectors find drops and crystals deterministically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chimp_worker.analysis import (
    CHIMP_SCHEMA,
    CLASS_NAMES,
    DecodedImage,
    DispenseStatus,
    ImageAnalysis,
    TargetRule,
)
from chimp_worker.config import Settings
from chimp_worker.errors import ConfigError
from chimp_worker.geometry import (
    dispense_point,
    mask_centroid,
    published_centroid,
    published_dispense_point,
)
from chimp_worker.mock_imager.synthetic import render_micrograph
from chimp_worker.models import (
    AnalysisOptions,
    ChimpAnalyser,
    configure_threads,
    file_sha256,
    load_classifier,
    load_detector,
    resolve_device,
)
from chimp_worker.models.detector import REFERENCE_SCORE_THRESHOLD
from chimp_worker.models.preprocessing import as_rgb, classifier_input

SIZE = (320, 256)  # the helper's calibration render size


def decoded(flavour: str, seed: int = 0) -> DecodedImage:
    pixels, _ = render_micrograph(flavour, seed, size=SIZE)
    return DecodedImage(as_rgb(pixels), f"{flavour}-{seed}", was_greyscale=pixels.ndim == 2)


@pytest.fixture(scope="module")
def settings(
    classifier_file: Path, vmxi_detector_file: Path, xchem_detector_file: Path
) -> Settings:
    return Settings(
        classifier_path=classifier_file,
        vmxi_detector_path=vmxi_detector_file,
        xchem_detector_path=xchem_detector_file,
        torch_threads=1,
        batch_size=2,
        device="cpu",
        classifier_input_size=128,
    )


@pytest.fixture(scope="module")
def analyser(settings: Settings) -> ChimpAnalyser:
    return ChimpAnalyser.from_settings(settings)


@pytest.fixture(scope="module")
def images() -> list[DecodedImage]:
    return [decoded("xchem"), decoded("vmxi")]


@pytest.fixture(scope="module")
def results(analyser: ChimpAnalyser, images: list[DecodedImage]) -> list[ImageAnalysis]:
    return analyser.analyse(images)


def by_role(result: ImageAnalysis, role: str) -> list:  # type: ignore[type-arg]
    return [d for d in result.detections if d.model_role == role]


def test_each_result_names_the_models_and_their_checksums(
    results: list[ImageAnalysis], settings: Settings
) -> None:
    assert len(results) == 2
    for result in results:
        assert result.analyser == "chimp"
        assert result.schema_name == CHIMP_SCHEMA
        refs = {ref.role: ref for ref in result.models}
        assert refs["classifier"].name == "convnext_tiny_384_in22ft1k"
        assert refs["classifier"].sha256 == file_sha256(settings.classifier_path)  # type: ignore[arg-type]
        assert refs["vmxi_detector"].name == "maskrcnn_resnet50_fpn"
        assert refs["vmxi_detector"].sha256 == file_sha256(settings.vmxi_detector_path)  # type: ignore[arg-type]
        assert refs["xchem_detector"].sha256 == file_sha256(settings.xchem_detector_path)  # type: ignore[arg-type]
        assert (result.width, result.height) == SIZE


def test_probabilities_are_the_classifiers_softmax_by_class_name(
    results: list[ImageAnalysis], images: list[DecodedImage], settings: Settings
) -> None:
    classifier = load_classifier(settings.classifier_path)  # type: ignore[arg-type]
    batch = torch.from_numpy(np.stack([classifier_input(im.pixels, 128) for im in images]))
    with torch.inference_mode():
        logits = classifier.model(batch)
    expected = torch.softmax(logits, dim=1)
    for result, row in zip(results, expected, strict=True):
        assert result.probabilities is not None
        assert set(result.probabilities) == set(CLASS_NAMES)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        for index, name in enumerate(classifier.class_names):
            assert result.probabilities[name] == pytest.approx(float(row[index]), abs=1e-6)


def test_detections_are_in_original_pixels_with_consistent_masks(
    results: list[ImageAnalysis],
) -> None:
    width, height = SIZE
    for result in results:
        assert result.detections
        for detection in result.detections:
            assert detection.score >= 0.6
            x0, y0, x1, y1 = detection.box
            assert 0 <= x0 <= x1 <= width
            assert 0 <= y0 <= y1 <= height
            assert detection.mask is not None
            assert detection.mask.frame == (height, width)
            assert detection.mask.values.dtype == bool
            assert detection.mask_area == int(detection.mask.full().sum())
            assert detection.model_mask is not None
            assert detection.model_mask.frame == (1352, 1688)
            # The default rule: targets from the mask at the model's input size.
            assert result.target_rule == "published"
            assert detection.centroid == published_centroid(detection.model_mask, height, width)


def test_the_xchem_detector_finds_drops_and_crystals(results: list[ImageAnalysis]) -> None:
    labels = {d.label for d in by_role(results[0], "xchem_detector")}
    assert labels == {"drop", "crystal"}
    assert {d.label for d in by_role(results[1], "vmxi_detector")} == {"crystal"}


def test_crystal_targets_are_the_vmxi_crystal_centroids(results: list[ImageAnalysis]) -> None:
    for result in results:
        expected = [
            (d.centroid, d.score, index)
            for index, d in enumerate(result.detections)
            if d.model_role == "vmxi_detector" and d.centroid is not None
        ]
        got = [((t.x, t.y), t.score, t.detection_index) for t in result.crystal_targets]
        assert got == expected
        assert got, "the calibrated VMXi detector finds crystals on its own image"


def test_the_dispense_point_comes_from_the_xchem_drops_and_crystals(
    results: list[ImageAnalysis],
) -> None:
    result = results[0]
    xchem = by_role(result, "xchem_detector")
    drops = [d for d in xchem if d.label == "drop"]
    crystals = [d for d in xchem if d.label == "crystal"]
    width, height = SIZE
    expected = published_dispense_point(
        [d.model_mask for d in drops],
        [d.score for d in drops],
        [c.model_mask for c in crystals],
        height,
        width,
    )
    assert result.dispense == expected
    assert result.dispense is not None
    assert result.dispense.status is DispenseStatus.OK
    assert result.dispense.drops_seen == len([d for d in drops if d.model_mask.area > 0])
    assert result.dispense.clearance_px > 0  # type: ignore[operator]


def test_the_original_rule_computes_on_the_resized_masks(
    images: list[DecodedImage], settings: Settings, results: list[ImageAnalysis]
) -> None:
    """``target_rule = "original"``: centroids and the dispense point from the masks resized to
    the original image; the same detections as the published rule, recorded as "original"."""
    analyser = ChimpAnalyser(
        detectors={"xchem": load_detector(settings.detector_paths["xchem"], 3)},
        options=AnalysisOptions(target_rule=TargetRule.ORIGINAL),
    )
    assert analyser.target_rule == "original"
    (result,) = analyser.analyse(images[:1])
    assert result.target_rule == "original"
    published = by_role(results[0], "xchem_detector")
    assert [d.box for d in result.detections] == [d.box for d in published]
    for detection in result.detections:
        assert detection.centroid == mask_centroid(detection.mask.full())  # type: ignore[union-attr]
    drops = [d for d in result.detections if d.label == "drop"]
    crystals = [d for d in result.detections if d.label == "crystal"]
    expected = dispense_point(
        [d.mask.full() for d in drops],  # type: ignore[union-attr]
        [d.score for d in drops],
        [c.mask.full() for c in crystals],  # type: ignore[union-attr]
    )
    assert result.dispense == expected
    assert result.dispense is not None
    if result.dispense.status is DispenseStatus.OK:
        best = max(drops, key=lambda d: d.score)
        assert best.mask.full()[result.dispense.y, result.dispense.x]  # type: ignore[union-attr]
        for crystal in crystals:
            assert not crystal.mask.full()[result.dispense.y, result.dispense.x]  # type: ignore[union-attr]


def test_every_stage_is_timed(results: list[ImageAnalysis]) -> None:
    for result in results:
        for stage in (
            "classifier_preprocess",
            "detector_preprocess",
            "classifier",
            "vmxi_detector",
            "xchem_detector",
            "xchem_detector_postprocess",
            "geometry",
        ):
            assert result.timings_ms[stage] >= 0.0, stage
        assert result.timings_ms["xchem_detector"] > 0.0


@pytest.fixture(scope="module")
def reference(images: list[DecodedImage], settings: Settings) -> ImageAnalysis:
    """The XChem image run the way the published tooling does: 0.05 inside the model, 100
    masks pasted at full size, then filtered at 0.6; batch norm not folded."""
    analyser = ChimpAnalyser(
        detectors={"xchem": load_detector(settings.detector_paths["xchem"], 3)},
        options=AnalysisOptions(
            model_score_threshold=REFERENCE_SCORE_THRESHOLD,
            paste_full_masks=True,
            fold_batchnorm=False,
        ),
    )
    return analyser.analyse(images[:1])[0]


def test_the_published_threshold_path_gives_identical_detections(
    reference: ImageAnalysis, images: list[DecodedImage], settings: Settings
) -> None:
    """The final threshold inside the model and masks pasted around their boxes only give the
    reference's detections and masks bit for bit (batch norm unfolded in both). This is also
    the determinism check: a second load and run reproduce the first."""
    unfolded = ChimpAnalyser(
        detectors={"xchem": load_detector(settings.detector_paths["xchem"], 3)},
        options=AnalysisOptions(fold_batchnorm=False),
    )
    (fast,) = unfolded.analyse(images[:1])
    slow = reference.detections
    assert [d.label for d in slow] == [d.label for d in fast.detections]
    assert [d.score for d in slow] == [d.score for d in fast.detections]
    assert [d.box for d in slow] == [d.box for d in fast.detections]
    assert all(
        np.array_equal(a.mask.full(), b.mask.full())  # type: ignore[union-attr]
        for a, b in zip(slow, fast.detections, strict=True)
    )
    assert fast.dispense == reference.dispense


def test_folded_batch_norm_changes_the_detections_only_by_rounding(
    results: list[ImageAnalysis], reference: ImageAnalysis
) -> None:
    """The defaults fold the frozen batch norm into the convolutions: same detections,
    centroids and dispense point as the reference; scores and boxes equal to float rounding."""
    folded = by_role(results[0], "xchem_detector")
    slow = reference.detections
    assert [d.label for d in folded] == [d.label for d in slow]
    for fast, plain in zip(folded, slow, strict=True):
        assert fast.score == pytest.approx(plain.score, abs=1e-5)
        assert fast.box == pytest.approx(plain.box, abs=1e-2)
        assert fast.centroid == plain.centroid
        assert abs(fast.mask_area - plain.mask_area) <= max(2, plain.mask_area // 1000)
    assert results[0].dispense == reference.dispense


def test_an_analyser_without_model_files_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one model file"):
        ChimpAnalyser()


def test_devices_resolve_to_what_is_there() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")


def test_thread_setting_is_applied() -> None:
    previous = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
