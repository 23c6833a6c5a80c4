"""Detector fine-tuning end to end: a published-format XChem detector is trained for one epoch
on mock images and the file it writes is a detector the worker loads and evaluates.

One epoch at a small internal size (torchvision's resize set to 128 px): this checks the loop,
the targets and the file format, not learning; the classifier test shows learning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.torch_threads import one_torch_thread
from helpers.weights import cached_weight_file

from chimp_worker.cli import main
from chimp_worker.evaluate.coco import load_coco
from chimp_worker.evaluate.mock_dataset import export_mock_dataset
from chimp_worker.models import load_detector
from chimp_worker.models.checkpoints import read_model_file
from chimp_worker.train.detector import DetectorTrainingConfig, train_detector

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def test_a_published_detector_fine_tunes_into_a_file_the_worker_loads(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("chimp-model-weights")) if cache else tmp_path / "weights"
    published = cached_weight_file(folder, "detector", flavour="xchem", seed=0)
    train = export_mock_dataset(
        tmp_path / "train", flavour="xchem", count=2, seed=30, size=(160, 128),
        outcomes=["crystals"],
    )  # fmt: skip
    val = export_mock_dataset(
        tmp_path / "val", flavour="xchem", count=1, seed=40, size=(160, 128),
        outcomes=["crystals"],
    )  # fmt: skip
    output = tmp_path / "xchem-local.pt"
    config = DetectorTrainingConfig(
        output=output,
        init=published,
        epochs=1,
        batch_size=2,
        max_lr=1e-4,
        patience=0,
        min_size=128,
        max_size=160,
        max_detections=10,
        device="cpu",
    )
    result = train_detector(load_coco(train.annotations), load_coco(val.annotations), config)
    assert [record.phase for record in result.history] == ["start", "all"]
    assert result.history[1].train_loss is not None
    assert result.history[1].train_loss > 0
    assert result.details["categories"] == ["drop", "crystal"]
    assert 0.0 <= result.best_metric <= 1.0

    contents = read_model_file(output, "detector")
    assert all(isinstance(value, torch.Tensor) for value in contents.values())  # raw state_dict
    loaded = load_detector(output, expected_classes=3)
    start = load_detector(published).model.state_dict()
    end = loaded.model.state_dict()
    changed = any(not torch.equal(start[key], end[key]) for key in start)
    assert changed == result.improved  # written only when the validation mAP improved


def test_cli_train_detector_from_scratch_writes_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHIMP_TORCH_THREADS", "1")
    exported = export_mock_dataset(
        tmp_path, count=3, seed=50, size=(160, 128), outcomes=["crystals"]
    )
    output, history = tmp_path / "vmxi.pt", tmp_path / "history.json"
    main(
        ["train", "detector", str(exported.annotations), "-o", str(output), "--flavour", "vmxi",
         "--epochs", "1", "--batch-size", "2", "--min-size", "96", "--max-size", "128",
         "--val-fraction", "0.3", "--max-detections", "10", "--history", str(history)]
    )  # fmt: skip
    data = json.loads(history.read_text())
    assert data["details"]["flavour"] == "vmxi"
    assert data["details"]["train_images"] == 2
    assert data["details"]["val_images"] == 1
    assert load_detector(output, expected_classes=2).num_classes == 2
    assert "bbox AP 0.5:0.95: start" in capsys.readouterr().out
