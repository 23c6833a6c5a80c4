"""The synthetic micrographs: exact ground truth, determinism, both imager flavours."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.mock_imager.scene import Circle, CrystalSpec, Ellipse, Scene, random_scene
from chimp_worker.mock_imager.synthetic import (
    encode_jpeg,
    encode_thumbnail,
    render_micrograph,
    render_scene,
)

SMALL = (160, 128)
CENTRED_DROP = Ellipse(80, 60, 50, 40)


def plain_scene(
    drop: Ellipse = CENTRED_DROP,
    crystals: tuple[CrystalSpec, ...] = (),
) -> Scene:
    """A 160 x 128 clear drop with nothing else in it, for hand-checked truths."""
    return Scene(
        width=160,
        height=128,
        base_outcome="clear",
        well=Circle(80, 64, 90),
        ring_width=3,
        plastic_level=0.45,
        well_level=0.6,
        drop=drop,
        drop_level=0.72,
        rim_width=3,
        crystals=crystals,
        shadow_length=0.3,
    )


def square(x0: float, y0: float, side: float, shade: float = 0.3) -> CrystalSpec:
    vertices = ((x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side))
    return CrystalSpec(vertices=vertices, shade=shade, facet_angle_deg=0.0)


def test_a_square_crystal_has_its_known_centroid_area_and_dark_edge() -> None:
    pixels, truth = render_scene(plain_scene(crystals=(square(60, 50, 20),)), flavour="vmxi")

    assert truth.outcome == "crystals"
    (crystal,) = truth.crystals
    assert crystal.centroid == pytest.approx((70.0, 60.0), abs=0.6)
    assert 400 <= crystal.area <= 441  # 20 x 20 up to 21 x 21 pixel centres
    assert crystal.region.box[0] in (60, 61)
    assert crystal.region.box[2] in (79, 80)
    assert not crystal.at_drop_edge
    assert crystal.touches == ()
    # The crystal is drawn where the truth says: dark outline and dark faces on a bright drop.
    mask = crystal.mask(160, 128)
    drop_only = truth.drop_mask & ~mask
    assert pixels[mask].mean() < pixels[drop_only].mean() - 60
    assert pixels[60, 60] < 60  # on the left edge: the dark outline


def test_the_drop_mask_is_the_ellipse_and_a_frame_cut_halves_it() -> None:
    _, whole = render_scene(plain_scene(), flavour="xchem")
    assert whole.drop_area == pytest.approx(math.pi * 50 * 40, rel=0.01)
    assert not whole.drop_cut_by_frame
    assert whole.drop_contains(80, 60)
    assert not whole.drop_contains(80, 105)

    _, cut = render_scene(plain_scene(drop=Ellipse(0, 60, 50, 40)), flavour="xchem")
    assert cut.drop_cut_by_frame
    # x = 0..50 of an ellipse centred on the left edge: half the area plus the x = 0 column.
    assert cut.drop_area == pytest.approx(math.pi * 50 * 40 / 2 + 80, rel=0.02)


def test_a_crystal_on_the_drop_edge_is_cut_by_it_and_flagged() -> None:
    # Drop spans x 30..130; this square spans x 120..140, so about half of it is outside.
    _, truth = render_scene(plain_scene(crystals=(square(120, 52, 20),)), flavour="vmxi")
    (crystal,) = truth.crystals
    assert crystal.at_drop_edge
    assert 150 < crystal.area < 260
    mask = crystal.mask(160, 128)
    assert not (mask & ~truth.drop_mask).any()  # never outside the drop
    assert crystal.centroid[0] < 127


def test_a_later_crystal_hides_an_earlier_one_and_both_are_marked_touching() -> None:
    crystals = (square(50, 50, 20), square(65, 50, 20, shade=0.95))
    pixels, truth = render_scene(plain_scene(crystals=crystals), flavour="vmxi")
    first, second = truth.crystals
    assert first.touches == (1,)
    assert second.touches == (0,)
    assert 15 * 20 <= first.area <= 16 * 21  # x 50..64 left visible
    assert first.centroid[0] == pytest.approx(57.5, abs=0.6)
    assert second.centroid == pytest.approx((75.0, 60.0), abs=0.6)
    assert not (first.mask(160, 128) & second.mask(160, 128)).any()
    assert pixels[60, 72] > 200  # the bright face of the second crystal where they overlap


def test_the_same_seed_gives_the_same_pixels_and_truth() -> None:
    a, truth_a = render_micrograph("xchem", 11, "crystals", size=SMALL)
    b, truth_b = render_micrograph("xchem", 11, "crystals", size=SMALL)
    c, _ = render_micrograph("xchem", 12, "crystals", size=SMALL)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert [t.centroid for t in truth_a.crystals] == [t.centroid for t in truth_b.crystals]
    assert encode_jpeg(a) == encode_jpeg(b)


def test_flavours_render_at_the_imagers_native_sizes() -> None:
    grey, vmxi = render_micrograph("vmxi", 2, "clear")
    colour, xchem = render_micrograph("xchem", 2, "clear")
    assert grey.shape == (2028, 2532)
    assert grey.dtype == np.uint8
    assert colour.shape == (1024, 1224, 3)
    assert colour.dtype == np.uint8
    assert (vmxi.width, vmxi.height, xchem.width, xchem.height) == (2532, 2028, 1224, 1024)
    assert Image.open(io.BytesIO(encode_jpeg(grey))).mode == "L"
    assert Image.open(io.BytesIO(encode_jpeg(colour))).mode == "RGB"
    thumb = Image.open(io.BytesIO(encode_thumbnail(grey)))
    assert thumb.size == (256, 205)


def test_a_smaller_render_is_the_same_scene_scaled() -> None:
    _, small = render_micrograph("vmxi", 4, "crystals", size=(253, 203))
    _, large = render_micrograph("vmxi", 4, "crystals", size=(506, 406))
    assert small.drop.cx * 2 == pytest.approx(large.drop.cx, rel=0.01)
    assert small.crystals[0].centroid[0] * 2 == pytest.approx(large.crystals[0].centroid[0], abs=3)


@pytest.mark.parametrize("outcome", CLASS_NAMES)
def test_each_requested_outcome_is_what_the_truth_and_contents_say(outcome: str) -> None:
    for seed in range(6):
        _, truth = render_micrograph("xchem", seed, outcome, size=SMALL)
        assert truth.outcome == outcome
        if outcome == "crystals":
            assert truth.crystals
            for crystal in truth.crystals:
                assert truth.drop_contains(*crystal.centroid) or crystal.at_drop_edge
        else:
            assert truth.crystals == ()
        if outcome == "precipitate":
            assert "precipitate" in truth.artefacts
        if outcome == "other":
            assert {"phase_separation", "fibres"} & set(truth.artefacts)


def test_random_plates_cover_every_case_the_analysers_must_handle() -> None:
    outcomes: Counter[str] = Counter()
    cut = at_edge = touching = bubbles = 0
    for seed in range(60):
        _, truth = render_micrograph("xchem", seed, size=(128, 102))
        outcomes[truth.outcome] += 1
        cut += truth.drop_cut_by_frame
        at_edge += any(c.at_drop_edge for c in truth.crystals)
        touching += any(c.touches for c in truth.crystals)
        bubbles += "bubbles" in truth.artefacts
    assert set(outcomes) == set(CLASS_NAMES)
    assert outcomes["crystals"] >= 12
    assert min(cut, at_edge, touching, bubbles) >= 3


def test_crystals_appear_and_grow_over_a_time_course() -> None:
    scene = random_scene(5, 320, 256, "crystals")
    truths = [render_scene(scene, flavour="vmxi", seed=5, time=t)[1] for t in (0.0, 0.5, 1.0)]
    counts = [len(t.crystals) for t in truths]
    assert counts[0] >= 1
    assert counts == sorted(counts)
    assert counts[2] > counts[0]
    first = [next(c for c in t.crystals if c.index == 0) for t in truths]
    assert first[0].area < first[1].area < first[2].area
    assert first[0].centroid == pytest.approx(first[2].centroid, abs=2.0)


def test_bad_arguments_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown imager flavour 'rock'"):
        render_micrograph("rock", 0)
    with pytest.raises(ValueError, match="unknown outcome 'gold'"):
        render_micrograph("vmxi", 0, "gold", size=SMALL)
    with pytest.raises(ValueError, match="time must be within"):
        render_micrograph("vmxi", 0, size=SMALL, time=1.5)
