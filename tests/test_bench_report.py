"""The benchmark's arithmetic on hand-made runs (the benchmark itself is a script, not a test)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from chimp_worker.bench import report as bench_report
from chimp_worker.bench.report import agreement, report_lines

OUTPUT: dict[str, Any] = {
    "probabilities": {"clear": 0.1, "crystals": 0.6, "other": 0.2, "precipitate": 0.1},
    "detections": [
        {"label": "drop", "score": 0.9, "box": [10.0, 10.0, 90.0, 80.0], "centroid": (50, 45)},
        {"label": "crystal", "score": 0.7, "box": [20.0, 20.0, 30.0, 30.0], "centroid": (25, 25)},
    ],
    "targets": [(25, 25)],
    "dispense": ["ok", 60, 50],
}


def run(configuration: str, pipeline_rate: float, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "configuration": configuration,
        "flavour": "xchem",
        "images": 4,
        "threads": 2,
        "matmul_gflops": 100.0,
        "load_s": 2.0,
        "models_images_per_s": 1.0,
        "pipeline_images_per_s": pipeline_rate,
        "pipeline_failed": 0,
        "stages_ms": {
            "fetch": 1.0,
            "decode": 15.0,
            "preprocess": 60.0,
            "classifier": 700.0,
            "detector": 5000.0,
            "postprocess": 50.0,
            "database_write": 30.0,
        },
        "pipeline_stages_ms": {},
        "flops": {"classifier": 46.5e9, "detector": 360e9},
        "peak_rss_bytes": 2 * 1024**3,
        "outputs": [copy.deepcopy(OUTPUT)],
    }
    base.update(changes)
    return base


def test_identical_outputs_agree_exactly() -> None:
    result = agreement([OUTPUT], [copy.deepcopy(OUTPUT)])
    assert result == {
        "probability": 0.0,
        "top_class_agreement": 1.0,
        "same_detections": True,
        "matched_detections": 1.0,
        "score": 0.0,
        "box_px": 0.0,
        "centroid_px": 0.0,
        "targets_identical": True,
        "targets_px": 0.0,
        "dispense_identical": True,
        "dispense_px": 0.0,
    }


def test_differences_are_measured_per_kind() -> None:
    other = copy.deepcopy(OUTPUT)
    other["probabilities"]["crystals"] = 0.6 + 2e-6
    other["detections"][1]["box"][2] = 30.5
    other["detections"][1]["centroid"] = (26, 25)
    other["dispense"] = ["ok", 61, 50]
    result = agreement([OUTPUT], [other])
    assert result["probability"] == pytest.approx(2e-6)
    assert result["box_px"] == pytest.approx(0.5)
    assert result["centroid_px"] == 1
    assert result["same_detections"] is True
    assert result["dispense_identical"] is False
    assert result["dispense_px"] == 1.0


def test_a_different_detection_list_is_not_the_same() -> None:
    other = copy.deepcopy(OUTPUT)
    other["detections"].pop()
    result = agreement([OUTPUT], [other])
    assert result["same_detections"] is False
    assert result["matched_detections"] == 0.5


def test_detections_are_paired_as_the_same_object_before_comparing() -> None:
    """An extra detection in front shifts every later one: pairing by label and IoU (not by
    position) still compares the drop with the drop and the crystal with the crystal."""
    other = copy.deepcopy(OUTPUT)
    other["detections"].insert(
        0, {"label": "crystal", "score": 0.95, "box": [60.0, 60.0, 70.0, 70.0], "centroid": None}
    )
    other["detections"][2]["box"] = [21.0, 20.0, 30.0, 30.0]  # IoU 0.9 with the original
    other["targets"] = [(26, 24)]
    other["probabilities"] = {"clear": 0.7, "crystals": 0.1, "other": 0.1, "precipitate": 0.1}
    result = agreement([OUTPUT], [other])
    assert result["matched_detections"] == 1.0
    assert result["same_detections"] is False  # one extra
    assert result["box_px"] == 1.0
    assert result["targets_px"] == pytest.approx(2**0.5)
    assert result["top_class_agreement"] == 0.0


def test_targets_pass_and_fail_from_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chimp_worker.models.analyser.bf16_supported", lambda: False)
    runs = [
        run("reference", 0.1, peak_rss_bytes=3 * 1024**3),
        # 0.25 images/s: 2.5x the reference, 288 images in 19.2 min; the classifier does
        # 46.5 GFLOP in 0.7 s = 66 GFLOP/s = 66 % of 100; the pipeline at 25 % of the
        # models' own 1.0 images/s.
        run("fast", 0.25),
    ]
    paired = [{"flavour": "xchem", "images": 4, "seconds": {"reference": 30.0, "fast": 16.0}}]
    lines = report_lines(runs, paired, ("reference", "fast"), "test machine")
    text = "\n".join(lines)
    # The target uses the interleaved ratio (30 / 16 = 1.88x), not the separate runs' 2.5x.
    assert "FAIL  xchem: fp32 pipeline 1.88x the plain reference, interleaved (>= 2.0x)" in text
    assert "reference 30.0 s, fast 16.0 s -> speed-up fast 1.88x" in text
    separate = "\n".join(report_lines(runs, [], ("reference", "fast"), "test machine"))
    assert "PASS  xchem: fp32 pipeline 2.50x the plain reference (>= 2.0x)" in separate
    assert "FAIL  xchem: 288-image plate 19.2 min, one worker (<= 8)" in text
    assert "PASS  xchem: classifier at 66% of the measured fp32 matmul rate (>= 65%)" in text
    assert "FAIL  xchem: pipeline at 25% of the models' own rate" in text
    assert "SKIP  xchem: bf16 >= 4x the plain reference: this CPU has no native bf16" in text
    assert "PASS  xchem: peak RSS 2.00 GiB per worker (<= 2.5)" in text
    assert "PASS  xchem: model load 2.0 s (< 10)" in text
    assert "fast vs reference: pipeline 2.50x" in text
    assert "same detections yes" in text
    assert "machine: test machine" in text
    assert "kept detections/image (mean)                 2.0           2.0" in text
    # 406.5 GFLOP at 100 GFLOP/s: 4.07 s per image, the best any configuration could do;
    # the reference took 30 s / 4 images = 7.5 s, so 1.85x is the most on offer.
    assert "models floor s/image (FLOPs/rate)           4.07          4.07" in text
    assert "its FLOPs allow at most 1.85x here" in text
    assert "the FLOPs alone need 19.5 min here" in text
    assert "GFLOP per image (classifier + detector, mean): reference 46.5 + 360.0" in text


def test_the_machine_is_described() -> None:
    text = bench_report.machine_description()
    assert "cores" in text
    assert "torch" in text


def test_interleaved_stages_and_post_processing_by_rule_are_reported() -> None:
    runs = [
        run("reference", 0.1),
        run("fast", 0.2, postprocess_by_rule_ms={"published": 42.0, "original": 120.0}),
    ]
    stages = {
        "reference": {"classifier": 400.0, "detector": 4000.0, "postprocess": 300.0},
        "fast": {"classifier": 320.0, "detector": 2500.0, "postprocess": 60.0},
    }
    paired = [
        {
            "flavour": "xchem",
            "images": 4,
            "seconds": {"reference": 30.0, "fast": 16.0},
            "stages_ms": stages,
            "classifier_ab": {
                "ms": {"reference": [400.0, 410.0, 390.0], "fast": [300.0, 410.0, 300.0]},
                "ratios": {"fast": [400 / 300, 1.0, 390 / 300]},
            },
        }
    ]
    text = "\n".join(report_lines(runs, paired, ("reference", "fast"), "test machine"))
    # 400 / 320 = 1.25x; 4000 / 2500 = 1.6x; 300 / 60 = 5x
    assert "interleaved classifier ms/image: reference 400 ms, fast 320 ms -> fast 1.25x" in text
    assert "interleaved detector ms/image: reference 4000 ms, fast 2500 ms -> fast 1.60x" in text
    assert "interleaved postprocess ms/image: reference 300 ms, fast 60 ms -> fast 5.00x" in text
    assert "rules alternated: published rule 42 ms, original rule 120 ms" in text
    # Medians 400 and 300 ms; 10-90 % ranges by linear interpolation over three calls.
    assert "classifier A/B, 3 calls each interleaved: reference 400 ms (392-408), fast " in text
    assert "classifier A/B speed-up of fast per turn: median 1.30x (10-90 %: 1.06x-1.33x)" in text
