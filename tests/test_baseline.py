"""The weight-free baseline analyser, against the mock imager's exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from chimp_worker.analysis import BASELINE_SCHEMA, AnalysisOptions, DecodedImage, DispenseStatus
from chimp_worker.baseline import BaselineAnalyser, _dispense_near_drop, _Region
from chimp_worker.config import load_settings
from chimp_worker.geometry import dispense_point
from chimp_worker.mock_imager.measure import crystal_hit, drop_iou, measure, mock_images
from chimp_worker.mock_imager.scene import Circle, CrystalSpec, Ellipse, Scene
from chimp_worker.mock_imager.synthetic import GroundTruth, render_micrograph, render_scene


@pytest.fixture(scope="module")
def analyser() -> BaselineAnalyser:
    return BaselineAnalyser(AnalysisOptions.from_settings(load_settings()))


def decoded(pixels: np.ndarray) -> DecodedImage:
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
    return DecodedImage(rgb, "test.jpg", was_greyscale=pixels.ndim == 2)


def one_crystal_drop() -> tuple[np.ndarray, GroundTruth]:
    """640 x 512, a clear drop centred at (320, 256), one dark 40 x 40 crystal at (270, 220)."""
    crystal = CrystalSpec(
        vertices=((250, 200), (290, 200), (290, 240), (250, 240)), shade=0.3, facet_angle_deg=30
    )
    scene = Scene(
        width=640,
        height=512,
        base_outcome="clear",
        well=Circle(320, 256, 300),
        ring_width=10,
        plastic_level=0.45,
        well_level=0.6,
        drop=Ellipse(320, 256, 200, 160, 20),
        drop_level=0.72,
        rim_width=14,
        crystals=(crystal,),
        shadow_length=0.3,
    )
    return render_scene(scene, flavour="vmxi", seed=3)


def test_one_crystal_is_found_at_its_centroid_and_the_dispense_point_avoids_it(
    analyser: BaselineAnalyser,
) -> None:
    pixels, truth = one_crystal_drop()
    (result,) = analyser.analyse([decoded(pixels)])

    assert result.analyser == "baseline"
    assert result.schema_name == BASELINE_SCHEMA
    assert (result.width, result.height) == (640, 512)
    assert drop_iou(result, truth) > 0.9
    (target,) = result.crystal_targets
    # On the crystal, near its centre (270, 220); its shadow falls down and to the right.
    assert truth.crystal_at(target.x, target.y) == 0
    assert abs(target.x - 270) <= 5
    assert abs(target.y - 220) <= 5
    crystal = result.detections[target.detection_index]
    assert crystal.label == "crystal"
    assert (crystal.centroid, crystal.score) == ((target.x, target.y), target.score)
    assert crystal.mask is not None
    assert crystal.mask.frame == (512, 640)
    assert crystal.mask.full().shape == (512, 640)
    assert crystal.mask.area == crystal.mask_area
    assert 1400 <= crystal.mask_area <= 1900  # 41 x 41 = 1681 true pixels
    assert result.top_class == "crystals"
    point = result.dispense
    assert point is not None
    assert point.status == DispenseStatus.OK
    assert truth.drop_contains(point.x, point.y)
    assert truth.crystal_at(point.x, point.y) is None
    assert point.clearance_px > 60
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_same_picture_in_grey_or_colour_gives_the_same_result(
    analyser: BaselineAnalyser,
) -> None:
    pixels, _ = one_crystal_drop()
    grey, colour = analyser.analyse([decoded(pixels), decoded(np.stack([pixels] * 3, axis=2))])
    assert grey.crystal_targets == colour.crystal_targets
    assert grey.dispense == colour.dispense
    assert grey.probabilities == colour.probabilities


@pytest.mark.parametrize(
    ("outcome", "seeds"),
    [("clear", (2, 6)), ("precipitate", (0, 1)), ("other", (3, 4)), ("crystals", (5, 9))],
)
def test_typical_drops_get_their_outcome(
    analyser: BaselineAnalyser, outcome: str, seeds: tuple[int, ...]
) -> None:
    for seed in seeds:
        pixels, truth = render_micrograph("xchem", seed, outcome, size=(640, 535))
        (result,) = analyser.analyse([decoded(pixels)])
        assert result.top_class == outcome, (seed, truth.artefacts, result.probabilities)
        if outcome != "crystals":
            assert result.crystal_targets == ()
        assert drop_iou(result, truth) > 0.85


def test_an_image_without_a_drop_says_so(analyser: BaselineAnalyser) -> None:
    flat = np.full((300, 400), 140, dtype=np.uint8)
    (result,) = analyser.analyse([decoded(flat)])
    assert result.detections == ()
    assert result.crystal_targets == ()
    assert result.dispense is not None
    assert result.dispense.status == DispenseStatus.NO_DROP
    assert result.top_class == "clear"


def test_the_box_dispense_point_is_the_full_image_one() -> None:
    """The baseline runs geometry.dispense_point on the drop's box; the answer must not move."""
    height, width = 90, 120
    ys, xs = np.mgrid[0:height, 0:width]
    drops = [
        ((xs - 60) ** 2 / 30**2 + (ys - 45) ** 2 / 20**2) <= 1,  # inside the frame
        ((xs - 10) ** 2 / 30**2 + (ys - 45) ** 2 / 25**2) <= 1,  # cut by the left edge
    ]
    crystal = (abs(xs - 62) <= 6) & (abs(ys - 44) <= 4)
    for drop in drops:
        for crystals in ([], [crystal & drop] if (crystal & drop).any() else []):
            full = dispense_point([drop], [0.9], crystals)

            def region(mask: np.ndarray) -> _Region:
                rows, cols = np.nonzero(mask)
                crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                return _Region(int(cols.min()), int(rows.min()), crop, width, height)

            boxed = _dispense_near_drop(region(drop), 0.9, [region(c) for c in crystals], 0.0)
            assert (boxed.status, boxed.x, boxed.y) == (full.status, full.x, full.y)
            assert boxed.clearance_px == pytest.approx(full.clearance_px)


def test_the_model_reference_names_the_algorithm_and_its_settings() -> None:
    default = BaselineAnalyser(AnalysisOptions.from_settings(load_settings()))
    stricter = BaselineAnalyser(AnalysisOptions.from_settings(load_settings(score_threshold=0.8)))
    (model,) = default.models
    assert (model.role, model.name, len(model.sha256)) == ("baseline", "baseline-cv", 64)
    again = BaselineAnalyser(AnalysisOptions.from_settings(load_settings()))
    assert model.sha256 == again.models[0].sha256
    assert stricter.models[0].sha256 != model.sha256


def test_measured_against_ground_truth_on_a_small_mixed_set(analyser: BaselineAnalyser) -> None:
    """A regression guard for the README's figures (measured there on 200 native images).

    This set (24 quarter-size images, seed 0) measured: drops 24/24, recall 31/42, target
    precision 31/37, outcomes 20/24, every dispense point inside the free drop.
    """
    result = measure(analyser, mock_images(24, size_divisor=4, seed=0))
    assert result.drops_found == 24
    assert result.crystals == 42
    assert result.crystal_recall >= 0.65
    assert result.target_precision >= 0.8
    assert result.dispense_inside_free_drop == result.dispense_points == 24
    assert result.outcome_accuracy >= 0.8


def test_a_target_finds_a_crystal_on_its_mask_or_near_its_centroid() -> None:
    _, truth = render_micrograph("vmxi", 5, "crystals", size=(320, 256))
    crystal = truth.crystals[0]
    x, y = crystal.centroid
    assert crystal_hit(crystal, x, y)
    assert crystal_hit(crystal, x + 2.5, y)  # within the 3-pixel minimum tolerance
    assert not crystal_hit(crystal, x + 200, y)
