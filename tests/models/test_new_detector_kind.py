"""A detector kind added as one description reaches the analyser and ``models info``: its file
loads from ``detector_paths``, its results carry its role and labels, and it supplies crystal
targets and the dispense point when it is the only detector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chimp_worker.analysis import DecodedImage
from chimp_worker.config import Settings
from chimp_worker.detector_kinds import DETECTOR_KINDS, DetectorKind
from chimp_worker.mock_imager.synthetic import render_micrograph
from chimp_worker.models import ChimpAnalyser, build_detector, save_detector_state_dict
from chimp_worker.models.info import describe_model_file

UV = DetectorKind("uv", "UV detector", ("background", "crystal", "salt", "drop"))


@pytest.fixture
def uv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(DETECTOR_KINDS, UV.name, UV)
    torch.manual_seed(0)
    return save_detector_state_dict(build_detector(UV.num_classes), tmp_path / "uv.pt")


def test_a_registered_kind_flows_from_settings_to_results(uv_file: Path) -> None:
    settings = Settings(detector_paths={"uv": uv_file}, device="cpu", torch_threads=1)
    analyser = ChimpAnalyser.from_settings(settings)
    assert list(analyser.detectors) == ["uv_detector"]
    assert analyser.detectors["uv_detector"].labels == UV.labels
    assert [ref.role for ref in analyser.models] == ["uv_detector"]
    assert (analyser.crystal_role, analyser.drop_role) == ("uv_detector", "uv_detector")

    pixels, _ = render_micrograph("xchem", 0, size=(320, 256))
    (result,) = analyser.analyse([DecodedImage(pixels, "uv-0")])
    assert {d.label for d in result.detections} <= set(UV.labels[1:])
    assert {d.model_role for d in result.detections} <= {"uv_detector"}
    assert result.dispense is not None  # the only kind with drops places the dispense point

    described = describe_model_file(uv_file, "uv")
    assert (described.role, described.classes) == ("uv_detector", UV.labels)
