"""Classifier fine-tuning on mock-imager images: it learns, it writes the published layout,
and the worker loads what it wrote.

The learning run uses timm's ``test_convnext`` (a 0.2 M-parameter ConvNeXt with the same
checkpoint layout) at 64 px so it takes seconds on a shared CPU; the published architecture is
exercised by the fine-tuning test, which starts from a published-format ConvNeXt-Tiny file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.torch_threads import one_torch_thread
from helpers.weights import cached_weight_file

from chimp_worker.analysis import CLASS_NAMES, ispyb_class
from chimp_worker.cli import main
from chimp_worker.evaluate.classifier import evaluate_classifier_model
from chimp_worker.evaluate.datasets import LabelledImage, read_labelled_csv
from chimp_worker.evaluate.mock_dataset import export_mock_dataset
from chimp_worker.models import (
    DEFAULT_CLASSIFIER_TYPE,
    ChimpAnalyser,
    load_classifier,
)
from chimp_worker.models.analyser import AnalysisOptions
from chimp_worker.models.checkpoints import read_model_file
from chimp_worker.train.classifier import ClassifierTrainingConfig, train_classifier
from chimp_worker.train.loop import EpochRecord, TrainingResult

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def mock_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[LabelledImage]]:
    """160 training and 48 validation images, balanced over the four classes."""
    root = tmp_path_factory.mktemp("mock-classifier")
    train = export_mock_dataset(root / "train", count=160, seed=0, size=(128, 104))
    val = export_mock_dataset(root / "val", count=48, seed=5000, size=(128, 104))
    return {
        "train": read_labelled_csv(train.labels_csv),
        "val": read_labelled_csv(val.labels_csv),
    }


class RecordingReporter:
    def __init__(self) -> None:
        self.epochs: list[EpochRecord] = []
        self.steps = 0
        self.phases: list[str] = []

    def start_epoch(self, epoch: int, epochs: int, phase: str, steps: int) -> None:
        self.phases.append(phase)

    def step(self, loss: float) -> None:
        self.steps += 1

    def end_epoch(self, record: EpochRecord) -> None:
        self.epochs.append(record)


@pytest.fixture(scope="module")
def trained(
    mock_sets: dict[str, list[LabelledImage]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, RecordingReporter]:
    config = ClassifierTrainingConfig(
        output=tmp_path_factory.mktemp("trained") / "classifier.pt",
        model_type="test_convnext",
        input_size=SIZE,
        epochs=8,
        frozen_epochs=1,
        batch_size=8,
        max_lr=2e-3,
        head_lr=1e-2,
        patience=0,
        seed=0,
        device="cpu",
    )
    reporter = RecordingReporter()
    result = train_classifier(mock_sets["train"], mock_sets["val"], config, reporter)
    return result, reporter


def test_training_measurably_improves_validation_f1(
    trained: tuple[TrainingResult, RecordingReporter],
) -> None:
    result, reporter = trained
    # A random ConvNeXt predicts nearly one class: mean F1 about 0.1-0.2.
    assert result.start_metric < 0.25
    assert result.best_metric >= result.start_metric + 0.1
    assert result.best_epoch >= 1
    assert result.improved
    assert result.epochs_run == 8
    assert not result.stopped_early
    # head-only first epoch, then all layers; the reporter saw every step and epoch
    assert reporter.phases == ["head"] + ["all"] * 7
    assert reporter.steps == 8 * (160 // 8)
    assert [r.epoch for r in reporter.epochs] == list(range(9))
    assert max(r.metric for r in result.history) == result.best_metric
    # not one lucky epoch: the trained epochs are better than the start on average too
    trained_scores = [r.metric for r in result.history[1:]]
    assert sum(trained_scores) / len(trained_scores) >= result.start_metric + 0.05
    assert result.details["train_images"] == {name: 40 for name in CLASS_NAMES}


def test_the_checkpoint_is_the_best_epoch_and_the_worker_reproduces_its_score(
    trained: tuple[TrainingResult, RecordingReporter], mock_sets: dict[str, list[LabelledImage]]
) -> None:
    result, _ = trained
    loaded = load_classifier(result.output)  # the worker's loader: published layout
    assert loaded.class_names == CLASS_NAMES
    assert loaded.model_type == "test_convnext"
    contents = read_model_file(result.output, "classifier")  # the worker's safe loader
    assert set(contents) == {
        "model_state_dict",
        "model_struc_dict",
        "optimizer_state_dict",
        "loss_val",
        "class_names",
    }
    analyser = ChimpAnalyser(
        classifier=loaded, options=AnalysisOptions(classifier_input_size=SIZE, batch_size=8)
    )
    evaluation = evaluate_classifier_model(
        mock_sets["val"], analyser, name="trained", test_set="val"
    )
    assert evaluation.metrics.mean_f1 == pytest.approx(result.best_metric)
    best = result.details["best_val_metrics"]
    assert [list(row) for row in evaluation.metrics.confusion] == best["confusion"]["matrix"]


def test_chimp_worker_analyse_loads_the_trained_checkpoint(
    trained: tuple[TrainingResult, RecordingReporter],
    mock_sets: dict[str, list[LabelledImage]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, _ = trained
    monkeypatch.setenv("CHIMP_TORCH_THREADS", "1")
    monkeypatch.setenv("CHIMP_CLASSIFIER_INPUT_SIZE", str(SIZE))
    images = [str(row.path) for row in mock_sets["val"][:2]]
    main(
        ["analyse", "--classifier", str(result.output), *images, "--json", str(tmp_path / "a.json")]
    )
    document = json.loads((tmp_path / "a.json").read_text())
    assert document["models"][0]["name"] == "test_convnext"
    loaded = load_classifier(result.output)
    analyser = ChimpAnalyser(classifier=loaded, options=AnalysisOptions(classifier_input_size=SIZE))
    direct = evaluate_classifier_model(mock_sets["val"][:2], analyser, name="x", test_set="x")
    for entry, outcome in zip(document["images"], direct.outcomes, strict=True):
        # analyse speaks ISPyB's class names; the evaluation keeps the classifier's own
        assert entry["top_class"] == ispyb_class(outcome.predicted)
        for name in CLASS_NAMES:
            assert entry["probabilities"][ispyb_class(name)] == pytest.approx(
                outcome.probabilities[name], abs=1e-5
            )


def test_fine_tuning_a_published_checkpoint_keeps_its_layout_and_freezes_the_backbone(
    mock_sets: dict[str, list[LabelledImage]],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("chimp-model-weights")) if cache else tmp_path / "weights"
    published = cached_weight_file(folder, "classifier", seed=0)
    output = tmp_path / "fine-tuned.pt"
    config = ClassifierTrainingConfig(
        output=output,
        init=published,
        input_size=32,
        epochs=1,
        frozen_epochs=1,
        batch_size=4,
        max_lr=1e-3,
        patience=0,
        device="cpu",
    )
    result = train_classifier(mock_sets["train"][:8], mock_sets["val"][:4], config)
    before = load_classifier(published)
    after = load_classifier(output)
    assert after.model_type == DEFAULT_CLASSIFIER_TYPE == before.model_type
    assert after.class_names == before.class_names
    start, end = before.model.state_dict(), after.model.state_dict()
    backbone = [key for key in start if not key.startswith("head.fc.")]
    assert all(torch.equal(start[key], end[key]) for key in backbone)
    head_changed = any(not torch.equal(start[k], end[k]) for k in start if k.startswith("head.fc."))
    assert head_changed == result.improved  # written only when the head-only epoch helped


def test_cli_trains_with_a_validation_split_and_writes_history(
    mock_sets: dict[str, list[LabelledImage]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CHIMP_TORCH_THREADS", "1")
    labels = mock_sets["train"][0].path.parent.parent / "labels.csv"
    output, history = tmp_path / "cli.pt", tmp_path / "history.json"
    main(
        [
            "train", "classifier", str(labels), "-o", str(output), "--model-type",
            "test_convnext", "--input-size", "32", "--epochs", "2", "--batch-size", "8",
            "--val-fraction", "0.25", "--history", str(history),
        ]
    )  # fmt: skip
    data = json.loads(history.read_text())
    assert data["details"]["val_images"] == {name: 10 for name in CLASS_NAMES}
    assert data["details"]["train_images"] == {name: 30 for name in CLASS_NAMES}
    assert [h["phase"] for h in data["history"]] == ["start", "head", "all"]
    assert load_classifier(output).class_names == CLASS_NAMES
    assert f"wrote {output}" in capsys.readouterr().out
