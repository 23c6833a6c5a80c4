"""Hit calling judged on labelled images: the three rules, thresholds chosen on a validation
split and written to the file the worker reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.torch_threads import one_torch_thread
from helpers.weights import cached_weight_file

from chimp_worker.cli import main
from chimp_worker.config import load_settings
from chimp_worker.evaluate.metrics import BINARY_CLASSES, classification_metrics
from chimp_worker.evaluate.mock_dataset import export_mock_dataset
from chimp_worker.hits import HitThresholds, ImageEvidence
from chimp_worker.hits.choose import Labelled, choose_thresholds, rule_metrics
from chimp_worker.ispyb.schema import create_all
from chimp_worker.wiring import make_pipeline


def labelled(crystals: bool, p: float, *found: float) -> Labelled:
    return Labelled(ImageEvidence.of(p, [(score, 400) for score in found]), crystals)


# A set where each model alone errs and together they do not: a hesitant classifier on a
# real crystal that the detector confirms, a detector that over-detects a clear drop the
# classifier is sure about, a sure classifier on a crystal the detector misses.
AGREEMENT = [
    labelled(True, 0.95),
    labelled(True, 0.4, 0.8),
    labelled(False, 0.45),
    labelled(False, 0.1, 0.9),
]


def test_the_combined_rule_beats_either_model_alone_where_they_err_differently() -> None:
    defaults = HitThresholds()
    f1 = {
        rule: rule_metrics(AGREEMENT, defaults, rule).scores("crystals").f1
        for rule in ("classifier", "detector", "combined")
    }
    # classifier at 0.5: TP 1, FP 0, FN 1 -> 0.667; detector: TP 1, FP 1, FN 1 -> 0.5
    assert f1 == {"classifier": pytest.approx(2 / 3), "detector": 0.5, "combined": 1.0}


def test_thresholds_are_chosen_for_f1_and_ties_stay_near_the_ones_in_force() -> None:
    images = [
        labelled(True, 0.9),
        labelled(True, 0.7),
        labelled(True, 0.45),
        labelled(False, 0.3),
        labelled(False, 0.5),
        labelled(False, 0.1),
    ]
    choice = choose_thresholds(images)
    # 0.35-0.45 all give TP 3, FP 1 (F1 0.857) against 0.8 above 0.5: 0.45 is nearest 0.5
    assert choice.thresholds.classifier_threshold == 0.45
    assert choice.validation["classifier"].scores("crystals").f1 == pytest.approx(6 / 7)
    agreement = choose_thresholds(AGREEMENT)
    assert agreement.validation["combined"].scores("crystals").f1 == 1.0
    assert agreement.thresholds.classifier_sure >= agreement.thresholds.combined_threshold
    with pytest.raises(ValueError, match="at least one 'crystals' image"):
        choose_thresholds([labelled(False, 0.2)])


def test_an_unanalysed_image_is_a_miss_never_dropped() -> None:
    images = [*AGREEMENT, Labelled(None, True)]
    metrics = rule_metrics(images, HitThresholds(), "combined")
    scores = metrics.scores("crystals")
    assert (scores.support, scores.true_positives, metrics.unpredicted) == (3, 2, (1, 0))


@pytest.fixture(scope="module")
def mock_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hits-set")
    export_mock_dataset(folder, flavour="vmxi", count=40, seed=7, size=(320, 256))
    return folder / "labels.csv"


@pytest.mark.slow
def test_cli_chooses_thresholds_the_worker_then_reads(
    mock_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("CHIMP_ANALYSER", "baseline")
    chosen, report = tmp_path / "hits.json", tmp_path / "report.json"
    main(["evaluate", "hits", str(mock_set), "--choose", str(chosen), "--json", str(report)])
    out = capsys.readouterr().out
    assert "Hit calling by baseline: 'crystals' on validation (12 images" in out
    assert "combined" in out
    assert "detector alone" in out
    assert "classifier alone" in out
    data = json.loads(report.read_text())
    assert data["analyser"] == "baseline"
    assert data["chosen_on_validation"] is True
    # every number in the report is the metric of the per-image verdicts it lists
    for split in ("test", "validation"):
        images = [image for image in data["images"] if image["split"] == split]
        truth = ["crystals" if image["crystals"] else "no crystals" for image in images]
        for rule in ("classifier", "detector", "combined"):
            predicted = [image["verdicts"][rule] for image in images]
            expected = classification_metrics(truth, predicted, BINARY_CLASSES)
            assert data[split][rule]["per_class"]["crystals"] == {
                "precision": expected.scores("crystals").precision,
                "recall": expected.scores("crystals").recall,
                "f1": expected.scores("crystals").f1,
                "support": expected.scores("crystals").support,
                "predicted": expected.scores("crystals").predicted,
                "true_positives": expected.scores("crystals").true_positives,
            }
    assert len([i for i in data["images"] if i["split"] == "validation"]) == 12
    # the baseline's measured figures on this set (seed 7, 10 crystal images of 40)
    assert data["test"]["combined"]["per_class"]["crystals"]["support"] == 7
    assert data["test"]["combined"]["per_class"]["crystals"]["true_positives"] == 6
    written = json.loads(chosen.read_text())
    assert written["analysers"]["baseline"] == data["thresholds"]
    assert written["chosen"]["baseline"]["validation_images"] == 12
    database_url = f"sqlite:///{tmp_path / 'worker.sqlite'}"
    create_all(database_url)
    settings = load_settings(
        analyser="baseline",
        hit_thresholds_file=chosen,
        image_roots=[tmp_path],
        database_url=database_url,
    )
    pipeline = make_pipeline(settings)
    try:
        assert pipeline.hit_policy.for_analyser("baseline").as_dict() == data["thresholds"]
    finally:
        pipeline.close()


def test_cli_refuses_val_without_a_file_to_write(mock_set: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "hits", str(mock_set), "--val", str(mock_set)])
    assert exit_info.value.code == 2


@pytest.fixture
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("_one_thread")
def test_chimp_models_are_judged_by_all_three_rules(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = getattr(request.config, "cache", None)
    weights = Path(cache.mkdir("chimp-model-weights")) if cache else tmp_path / "weights"
    classifier = cached_weight_file(weights, "classifier", seed=0)
    detector = cached_weight_file(weights, "detector", flavour="vmxi", seed=0)
    folder = tmp_path / "set"
    export_mock_dataset(folder, flavour="vmxi", count=4, seed=11, size=(320, 256))
    report = tmp_path / "report.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHIMP_CLASSIFIER_PATH", str(classifier))
        patch.setenv("CHIMP_VMXI_DETECTOR_PATH", str(detector))
        patch.setenv("CHIMP_TORCH_THREADS", "1")
        patch.setenv("CHIMP_CLASSIFIER_INPUT_SIZE", "64")
        main(["evaluate", "hits", str(folder / "labels.csv"), "--json", str(report)])
    assert "Hit calling by chimp: 'crystals' on test (4 images" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["analyser"] == "chimp"
    for image in data["images"]:
        assert 0.0 <= image["p_crystal"] <= 1.0
        assert isinstance(image["crystal_scores"], list)  # the detector ran on every image
        assert all(score >= 0.6 for score in image["crystal_scores"])
        assert set(image["verdicts"]) == {"classifier", "detector", "combined"}
