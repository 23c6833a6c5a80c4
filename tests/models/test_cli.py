"""``chimp-worker analyse`` and ``chimp-worker models info`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from chimp_worker.analysis import DispenseStatus, MaskCrop
from chimp_worker.cli import main
from chimp_worker.geometry import published_centroid, published_dispense_point
from chimp_worker.mock_imager.synthetic import render_micrograph
from chimp_worker.models import file_sha256

# pycocotools' RLE decode trips numpy 2's __array__ copy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An XChem colour PNG and a VMXi greyscale JPEG, as the imagers write them."""
    folder = tmp_path_factory.mktemp("images")
    rgb, _ = render_micrograph("xchem", 0, size=(320, 256))
    grey, _ = render_micrograph("vmxi", 0, size=(320, 256))
    Image.fromarray(rgb).save(folder / "xchem-drop.png")
    Image.fromarray(grey).save(folder / "vmxi-drop.jpg", quality=92)
    return {"png": folder / "xchem-drop.png", "jpeg": folder / "vmxi-drop.jpg"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIMP_TORCH_THREADS", "1")
    monkeypatch.setenv("CHIMP_CLASSIFIER_INPUT_SIZE", "128")


def test_analyse_prints_writes_json_and_overlays_and_reports_a_bad_file(
    tmp_path: Path,
    image_files: dict[str, Path],
    classifier_file: Path,
    xchem_detector_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "gone.jpg"
    code, out, err = run_cli(
        [
            "analyse",
            "--classifier",
            str(classifier_file),
            "--xchem-detector",
            str(xchem_detector_file),
            str(image_files["png"]),
            str(image_files["jpeg"]),
            str(missing),
            "--json",
            str(tmp_path / "out.json"),
            "--overlay",
            str(tmp_path / "overlays"),
        ],
        capsys,
    )
    assert code == 1  # one of the three images could not be analysed
    assert "xchem-drop.png" in out
    assert "vmxi-drop.jpg" in out
    assert "image_missing" in out
    assert f"{missing}: image_missing" in err
    assert "1 of 3 images could not be analysed" in err
    assert "Traceback" not in err

    document = json.loads((tmp_path / "out.json").read_text())
    assert {m["role"]: m["sha256"] for m in document["models"]} == {
        "classifier": file_sha256(classifier_file),
        "xchem_detector": file_sha256(xchem_detector_file),
    }
    png, jpeg, gone = document["images"]
    assert gone["error"]["reason"] == "image_missing"
    for entry in (png, jpeg):
        assert (entry["width"], entry["height"]) == (320, 256)
        assert set(entry["probabilities"]) == {"clear", "crystal", "other", "precipitant"}
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert entry["top_class"] == max(entry["probabilities"], key=entry["probabilities"].get)

    # The full result: masks decode to what the centroids and the dispense point came from,
    # the model-input masks by the published rule (the default).
    assert png["target_rule"] == "published"
    masks = [mask_utils.decode(d["mask_rle"]).astype(bool) for d in png["detections"]]
    model_masks = [
        MaskCrop.from_full(mask_utils.decode(d["model_mask_rle"]).astype(bool))
        for d in png["detections"]
    ]
    for detection, mask, model_mask in zip(png["detections"], masks, model_masks, strict=True):
        assert mask.shape == (256, 320)
        assert model_mask.frame == (1352, 1688)
        assert int(mask.sum()) == detection["mask_area"]
        centroid = published_centroid(model_mask, 256, 320)
        assert detection["centroid_xy"] == (list(centroid) if centroid else None)
    drops = [
        (m, d["score"])
        for m, d in zip(model_masks, png["detections"], strict=True)
        if d["label"] == "drop"
    ]
    crystals = [
        m for m, d in zip(model_masks, png["detections"], strict=True) if d["label"] == "crystal"
    ]
    assert drops
    assert crystals
    expected = published_dispense_point(
        [m for m, _ in drops], [s for _, s in drops], crystals, 256, 320
    )
    assert png["dispense"]["status"] == expected.status.value
    assert (png["dispense"]["x"], png["dispense"]["y"]) == (expected.x, expected.y)
    # Without a VMXi detector the XChem detector's crystals are the targets.
    assert [(t["x"], t["y"]) for t in png["crystal_targets"]] == [
        tuple(d["centroid_xy"])
        for d in png["detections"]
        if d["label"] == "crystal" and d["centroid_xy"] is not None
    ]

    for name in ("xchem-drop", "vmxi-drop"):
        overlay = cv2.imread(str(tmp_path / "overlays" / f"{name}.overlay.png"))
        assert overlay is not None
        assert overlay.shape == (256, 320, 3)
    assert not (tmp_path / "overlays" / "gone.overlay.png").exists()
    if png["dispense"]["status"] == DispenseStatus.OK.value:
        overlay = cv2.imread(str(tmp_path / "overlays" / "xchem-drop.overlay.png"))
        blue, green, red = (int(v) for v in overlay[png["dispense"]["y"], png["dispense"]["x"]])
        assert (red, green, blue) == (220, 30, 30)  # the red dispense dot


def test_models_info_describes_each_kind(
    classifier_file: Path,
    vmxi_detector_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        ["models", "info", str(classifier_file), str(vmxi_detector_file)], capsys
    )
    assert code == 0, err
    assert "convnext_tiny_384_in22ft1k" in out
    assert "clear, crystals, other, precipitate" in out
    assert "128 x 128 (configured" in out  # from CHIMP_CLASSIFIER_INPUT_SIZE
    assert file_sha256(classifier_file) in out
    assert "role:          vmxi_detector" in out
    assert "background, crystal" in out
    assert "1352 x 1688" in out
    assert file_sha256(vmxi_detector_file) in out


def test_models_info_refuses_the_wrong_kind_in_one_line(
    vmxi_detector_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["models", "info", "--kind", "xchem", str(vmxi_detector_file)], capsys)
    assert code == 2  # a bad model file is a configuration error: systemd must not loop
    assert "has 2 classes, expected 3" in err
    assert "Traceback" not in err
    assert out == ""


def test_models_info_refuses_a_truncated_file(
    tmp_path: Path, classifier_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "classifier.pt"
    truncated.write_bytes(classifier_file.read_bytes()[:1_000_000])
    code, _, err = run_cli(["models", "info", "--kind", "classifier", str(truncated)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == (
        f"chimp-worker: bad_model_file: classifier file {truncated} is truncated or not a "
        "torch file " + lines[0].split("torch file ", 1)[1]
    )
    assert lines[-1] == "chimp-worker: bad_model_file: 1 of 1 model files refused"
    assert "Traceback" not in err


def test_analyse_with_a_detector_file_as_the_classifier_fails_cleanly(
    image_files: dict[str, Path], vmxi_detector_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["analyse", "--classifier", str(vmxi_detector_file), str(image_files["png"])], capsys
    )
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "is a Mask R-CNN detector state_dict, not a classifier checkpoint" in err


def test_every_models_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["analyse", "--help"], ["models", "info", "--help"]):
        code, out, _ = run_cli(args, capsys)
        assert code == 0
        assert "Example:" in out


def test_overlay_draws_masks_boxes_targets_and_the_dispense_dot() -> None:
    from chimp_worker.analysis import (
        CrystalTarget,
        Detection,
        DispensePoint,
        ImageAnalysis,
    )
    from chimp_worker.overlay import render_overlay

    height, width = 120, 200
    drop = np.zeros((height, width), bool)
    drop[20:100, 30:170] = True
    crystal = np.zeros((height, width), bool)
    crystal[40:60, 40:60] = True
    analysis = ImageAnalysis(
        analyser="chimp",
        schema_name="CHIMP",
        models=(),
        width=width,
        height=height,
        detections=(
            Detection(
                "drop",
                0.9,
                (30, 20, 169, 99),
                MaskCrop.from_full(drop),
                int(drop.sum()),
                (100, 60),
                "xchem_detector",
            ),
            Detection(
                "crystal",
                0.8,
                (40, 40, 59, 59),
                MaskCrop.from_full(crystal),
                400,
                (50, 50),
                "xchem_detector",
            ),
        ),
        crystal_targets=(CrystalTarget(50, 50, 0.8, 1),),
        dispense=DispensePoint(DispenseStatus.OK, 130, 70, 29.0, 1),
    )
    pixels = np.full((height, width, 3), 128, np.uint8)
    image = render_overlay(pixels, analysis)
    assert image.shape == (height, width, 3)
    assert tuple(image[70, 130]) == (220, 30, 30)  # the red dispense dot
    assert tuple(image[5, 195]) == (128, 128, 128)  # untouched background
    assert not np.array_equal(image[90, 100], pixels[90, 100])  # the drop mask is tinted
    assert tuple(image[90, 20]) == (128, 128, 128)  # left of the drop: not tinted
    assert tuple(image[42, 42]) != tuple(image[90, 100])  # the crystal has its own tint
    assert tuple(image[99, 100]) == (20, 40, 160)  # the drop's dark-blue box edge
    assert render_overlay(pixels, analysis).tobytes() == image.tobytes()  # deterministic
    with pytest.raises(ValueError, match="200 x 120"):
        render_overlay(np.zeros((10, 10, 3), np.uint8), analysis)
