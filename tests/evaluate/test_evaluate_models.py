"""Evaluation through real models, real image files, a real database and the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.ispyb_rows import add_plate, make_analysis
from helpers.torch_threads import one_torch_thread
from helpers.weights import cached_weight_file

from chimp_worker.analysis import BASELINE_SCHEMA, CLASS_NAMES
from chimp_worker.cli import main
from chimp_worker.evaluate.classifier import (
    evaluate_classifier_database,
    evaluate_classifier_model,
    read_image,
)
from chimp_worker.evaluate.coco import load_coco
from chimp_worker.evaluate.datasets import read_labelled_csv
from chimp_worker.evaluate.detector import evaluate_detector, make_detector_analyser
from chimp_worker.evaluate.metrics import classification_metrics, detector_as_classifier
from chimp_worker.evaluate.mock_dataset import MockDataset, export_mock_dataset
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.writer import write_image_result
from chimp_worker.models import (
    ChimpAnalyser,
    build_classifier,
    load_classifier,
    save_classifier_checkpoint,
)
from chimp_worker.models.analyser import AnalysisOptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def _cli_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIMP_TORCH_THREADS", "1")
    monkeypatch.setenv("CHIMP_CLASSIFIER_INPUT_SIZE", "64")


@pytest.fixture(scope="module")
def weights_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("weights")
    return Path(cache.mkdir("chimp-model-weights"))


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded classifier in the published layout (timm's tiny test ConvNeXt, for speed)."""
    torch.manual_seed(3)
    model = build_classifier(len(CLASS_NAMES), "test_convnext")
    path = tmp_path_factory.mktemp("classifier") / "small.pt"
    return save_classifier_checkpoint(model, CLASS_NAMES, path, "test_convnext")


@pytest.fixture(scope="module")
def vmxi_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[MockDataset, Path]:
    """Eight mock VMXi images, and a CSV of them plus one corrupt file."""
    root = tmp_path_factory.mktemp("vmxi-set")
    exported = export_mock_dataset(root, count=8, seed=11, size=(128, 104))
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with_broken = root / "with-broken.csv"
    with_broken.write_text(exported.labels_csv.read_text() + "images/broken.jpg,crystals\n")
    return exported, with_broken


def test_classifier_evaluation_scores_what_the_worker_predicts_and_keeps_unreadable_images(
    small_classifier: Path, vmxi_set: tuple[MockDataset, Path]
) -> None:
    _, csv_path = vmxi_set
    rows = read_labelled_csv(csv_path)
    analyser = ChimpAnalyser(
        classifier=load_classifier(small_classifier),
        options=AnalysisOptions(classifier_input_size=64),
    )
    evaluation = evaluate_classifier_model(
        rows, analyser, name="small", test_set="mock", batch_size=3
    )
    assert len(evaluation.outcomes) == 9
    broken = evaluation.outcomes[-1]
    assert broken.predicted is None
    assert "broken.jpg" in (broken.error or "")
    direct = analyser.analyse([read_image(row.path, 10**8) for row in rows[:8]])
    assert [o.predicted for o in evaluation.outcomes[:8]] == [a.top_class for a in direct]
    expected = classification_metrics(
        [row.label for row in rows], [a.top_class for a in direct] + [None]
    )
    assert evaluation.metrics == expected
    assert evaluation.metrics.unpredicted[0] == 1  # the broken image, a 'crystals' miss
    assert evaluation.metrics.scores("crystals").support == 3


def test_cli_evaluate_classifier_prints_table5_and_writes_json_and_plot(
    small_classifier: Path,
    vmxi_set: tuple[MockDataset, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exported, _ = vmxi_set
    json_path, plots = tmp_path / "out.json", tmp_path / "plots"
    main(
        ["evaluate", "classifier", str(exported.labels_csv), "--model", str(small_classifier),
         "--json", str(json_path), "--plots", str(plots)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Table 5" in out
    assert "Confusion matrix" in out
    data = json.loads(json_path.read_text())
    assert data["model"] == "small.pt"
    assert data["metrics"]["classes"] == ["crystals", "precipitate", "clear", "other"]
    assert len(data["images"]) == 8
    assert sum(map(sum, data["metrics"]["confusion"]["matrix"])) == 8
    assert (plots / "pr_classes.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_refuses_labels_outside_the_classes_unless_mapped(
    small_classifier: Path, tmp_path: Path, vmxi_set: tuple[MockDataset, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    exported, _ = vmxi_set
    image = exported.root / "images" / "00001.jpg"
    (tmp_path / "ten.csv").write_text(
        f"path,label\n{image},3D Crystals\n{image.parent / '00002.jpg'},0\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["evaluate", "classifier", str(tmp_path / "ten.csv"), "--model", str(small_classifier)]
        )
    assert exit_info.value.code == 2  # a data set that does not fit: a usage error
    assert "'3D Crystals'" in capsys.readouterr().err
    main(
        ["evaluate", "classifier", str(tmp_path / "ten.csv"), "--model", str(small_classifier),
         "--label-map", "table1", "--json", str(tmp_path / "m.json")]
    )  # fmt: skip
    truths = [entry["truth"] for entry in json.loads((tmp_path / "m.json").read_text())["images"]]
    assert truths == ["crystals", "clear"]


def test_database_results_are_scored_by_schema_matching_paths_and_ids(
    ispyb_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory, drops=4)
    tops = {"crystals": 0.7, "clear": 0.1, "other": 0.05, "precipitate": 0.15}
    clear = {"crystals": 0.1, "clear": 0.6, "other": 0.1, "precipitate": 0.2}
    precipitate = {"crystals": 0.1, "clear": 0.1, "other": 0.1, "precipitate": 0.7}
    for image_id, probabilities in zip(plate.imageIds[:3], (tops, clear, precipitate), strict=True):
        write_image_result(factory, image_id, make_analysis(probabilities=probabilities))
    other = {"crystals": 0.1, "clear": 0.1, "other": 0.7, "precipitate": 0.1}
    write_image_result(
        factory,
        plate.imageIds[3],
        make_analysis(probabilities=other, schema=BASELINE_SCHEMA, analyser="baseline"),
    )
    engine.dispose()
    base = f"/dls/imaging/{plate.containerId}"
    csv_path = tmp_path / "scored.csv"
    csv_path.write_text(
        "path,label,blSampleImageId\n"
        f"{base}/1.jpg,crystals,\n{base}/2.jpg,precipitate,\n{base}/3.jpg,precipitate,\n"
        f"elsewhere/4.jpg,other,{plate.imageIds[3]}\n"
    )
    rows = read_labelled_csv(csv_path, check_files=False)
    evaluation = evaluate_classifier_database(rows, factory, test_set="scored")
    assert [o.predicted for o in evaluation.outcomes] == ["crystals", "clear", "precipitate", None]
    assert evaluation.outcomes[0].probabilities == pytest.approx(tops)
    metrics = evaluation.metrics
    assert (metrics.scores("crystals").precision, metrics.scores("crystals").recall) == (1.0, 1.0)
    assert metrics.scores("precipitate").f1 == pytest.approx(2 / 3)
    assert metrics.scores("clear").support == 0
    assert metrics.mean_f1 == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    baseline = evaluate_classifier_database(rows, factory, schema=BASELINE_SCHEMA, test_set="s")
    assert [o.predicted for o in baseline.outcomes] == [None, None, None, "other"]
    main(
        ["--database-url", ispyb_url, "evaluate", "classifier", str(csv_path),
         "--from-database", "--json", str(tmp_path / "db.json")]
    )  # fmt: skip
    data = json.loads((tmp_path / "db.json").read_text())
    assert data["model"] == "database:CHIMP"
    assert data["metrics"]["mean_f1"] == pytest.approx(metrics.mean_f1)


@pytest.fixture(scope="module")
def xchem_set(tmp_path_factory: pytest.TempPathFactory) -> MockDataset:
    root = tmp_path_factory.mktemp("xchem-set")
    return export_mock_dataset(
        root, flavour="xchem", count=2, seed=21, size=(160, 128), outcomes=["crystals", "clear"]
    )


def test_detector_evaluation_gives_map_by_category_and_the_crystals_table(
    weights_dir: Path, xchem_set: MockDataset, tmp_path: Path
) -> None:
    detector_file = cached_weight_file(weights_dir, "detector", flavour="xchem", seed=0)
    analyser = make_detector_analyser(detector_file, device="cpu", torch_threads=1)
    model = analyser.detectors["xchem_detector"].model
    # seconds, not minutes: a small internal size and at most 10 full-size masks per image
    model.transform.min_size, model.transform.max_size = (128,), 160
    model.roi_heads.detections_per_img = 10
    coco = load_coco(xchem_set.annotations)
    evaluation = evaluate_detector(
        analyser, name="xchem", test_set="mock", coco=coco, score_threshold=0.6
    )
    assert evaluation.coco is not None
    assert {(s.iou_type, s.category) for s in evaluation.coco.scores} == {
        (iou, category) for iou in ("bbox", "segm") for category in ("all", "drop", "crystal")
    }
    for scores in evaluation.coco.scores:
        assert scores.ap is None or 0.0 <= scores.ap <= 1.0
    paths = [str(coco.image_path(image).resolve()) for image in coco.images]
    again = analyser.analyse([read_image(Path(p), 10**8) for p in paths])
    assert evaluation.coco.predictions == sum(len(a.detections) for a in again)
    counts = [
        sum(1 for d in a.detections if d.label == "crystal" and d.score >= 0.6) for a in again
    ]
    assert [evaluation.crystals_per_image[p] for p in paths] == counts
    truth = ["crystals" if coco.crystal_counts()[i] else "no crystals" for i in (1, 2)]
    assert truth == ["crystals", "no crystals"]
    assert evaluation.as_classifier == detector_as_classifier(truth, counts)
    data = evaluation.as_dict()
    assert data["as_classifier"]["score_threshold"] == 0.6
    assert len(data["coco"]["scores"]) == 6

    from chimp_worker.evaluate.report import plot_detector_curves

    written = plot_detector_curves(evaluation.coco.curves, tmp_path)
    assert [p.name for p in written] == ["pr_bbox.png", "pr_segm.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)


@pytest.mark.slow
def test_cli_evaluate_detector_at_the_published_size(
    weights_dir: Path, xchem_set: MockDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command as a facility runs it: torchvision's 800 px resize, both tables, plots."""
    detector_file = cached_weight_file(weights_dir, "detector", flavour="xchem", seed=0)
    json_path, plots = tmp_path / "det.json", tmp_path / "plots"
    main(
        ["evaluate", "detector", "--model", str(detector_file), "--annotations",
         str(xchem_set.annotations), "--iou-type", "segm", "--max-detections", "5",
         "--json", str(json_path), "--plots", str(plots)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Tables 6/8" in out
    assert "Tables 7/9" in out
    data = json.loads(json_path.read_text())
    assert {s["category"] for s in data["coco"]["scores"]} == {"all", "drop", "crystal"}
    assert {s["iou_type"] for s in data["coco"]["scores"]} == {"segm"}
    assert data["coco"]["max_detections"] == 5
    assert data["coco"]["predictions"] <= 2 * 5
    assert data["as_classifier"]["metrics"]["images"] == 2
    assert [p.name for p in plots.iterdir()] == ["pr_segm.png"]


def test_the_bf16_mode_is_judged_the_same_way(weights_dir: Path, xchem_set: MockDataset) -> None:
    """``CHIMP_PRECISION=bf16 chimp-worker evaluate detector``: the opt-in mode's detector
    (batch norm folded, channels-last, bf16 autocast) gets the same tables, so a facility can
    set them beside the fp32 ones before switching it on."""
    detector_file = cached_weight_file(weights_dir, "detector", flavour="xchem", seed=0)
    tables = {}
    for precision in ("fp32", "bf16"):
        analyser = make_detector_analyser(
            detector_file, device="cpu", torch_threads=1, precision=precision
        )
        assert analyser.options.precision == precision
        model = analyser.detectors["xchem_detector"].model
        model.transform.min_size, model.transform.max_size = (128,), 160
        model.roi_heads.detections_per_img = 10
        tables[precision] = evaluate_detector(
            analyser,
            name=precision,
            test_set="mock",
            coco=load_coco(xchem_set.annotations),
            score_threshold=0.6,
        )
    weight = model.backbone.body.layer1[0].conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    fp32, bf16 = tables["fp32"].coco, tables["bf16"].coco
    assert fp32 is not None
    assert bf16 is not None
    assert {(s.iou_type, s.category) for s in bf16.scores} == {
        (s.iou_type, s.category) for s in fp32.scores
    }
    assert bf16.predictions > 0
    assert tables["bf16"].crystals_per_image.keys() == tables["fp32"].crystals_per_image.keys()
