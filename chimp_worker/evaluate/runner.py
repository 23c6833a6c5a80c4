"""One call per ``chimp-worker evaluate`` subcommand: read the data set, build the model the way
the worker builds it (from ``Settings``), score it. The commands only parse and render."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chimp_worker.analysis import CHIMP_SCHEMA
from chimp_worker.config import Settings
from chimp_worker.detector_kinds import (
    CLASSIFIER,
    DETECTOR_KINDS,
    configured_model_files,
    detector_kind,
)
from chimp_worker.errors import ConfigError, DatasetError
from chimp_worker.evaluate.classifier import (
    ClassifierEvaluation,
    Progress,
    evaluate_classifier_database,
    evaluate_classifier_model,
)
from chimp_worker.evaluate.coco import IOU_TYPES, load_coco
from chimp_worker.evaluate.datasets import (
    LabelledImage,
    apply_label_map,
    load_label_map,
    read_labelled_csv,
)
from chimp_worker.evaluate.detector import DetectorEvaluation, evaluate_detector
from chimp_worker.evaluate.hits import HitEvaluation


def load_rows(
    labels_csv: Path,
    label_map: str | None,
    *,
    check_files: bool = True,
    image_root: Path | None = None,
) -> list[LabelledImage]:
    """The CSV's rows with ``label_map`` (a name such as ``table1`` or a file) applied."""
    rows = read_labelled_csv(labels_csv, check_files=check_files, image_root=image_root)
    return apply_label_map(rows, load_label_map(label_map) if label_map else None)


def count_rows(labels_csv: Path | None, annotations: Path | None) -> int:
    """Images an evaluation will visit (for a progress bar); 0 when unknown."""
    total = 0
    if labels_csv is not None:
        total += len(read_labelled_csv(labels_csv, check_files=False))
    if annotations is not None:
        total += len(load_coco(annotations).images)
    return total


def run_classifier_evaluation(
    settings: Settings,
    labels_csv: Path,
    *,
    model_path: Path | None = None,
    label_map: str | None = None,
    from_database: bool = False,
    schema: str = CHIMP_SCHEMA,
    image_root: Path | None = None,
    progress: Progress | None = None,
) -> ClassifierEvaluation:
    """Score the classifier file (default: ``classifier_path``) or the database's results."""
    rows = load_rows(labels_csv, label_map, check_files=not from_database, image_root=image_root)
    test_set = Path(labels_csv).stem
    if from_database:
        from chimp_worker.wiring import make_database

        engine, session_factory = make_database(settings)
        try:
            return evaluate_classifier_database(
                rows, session_factory, schema=schema, test_set=test_set
            )
        finally:
            engine.dispose()
    path = model_path or settings.classifier_path
    if path is None:
        raise ConfigError(
            "classifier_path [CHIMP_CLASSIFIER_PATH]: no classifier file; give --model "
            "or use --from-database"
        )
    from chimp_worker.models import (
        ChimpAnalyser,
        configure_threads,
        load_classifier,
        resolve_device,
    )
    from chimp_worker.models.analyser import AnalysisOptions

    configure_threads(settings.torch_threads)
    analyser = ChimpAnalyser(
        classifier=load_classifier(path),
        options=AnalysisOptions.from_settings(settings),
        device=resolve_device(settings.device),
    )
    return evaluate_classifier_model(
        rows,
        analyser,
        name=Path(path).name,
        test_set=test_set,
        max_pixels=settings.image_max_pixels,
        batch_size=settings.batch_size,
        progress=progress,
    )


def detector_path(settings: Settings, model_path: Path | None, flavour: str | None) -> Path:
    """--model, else the configured detector of --flavour, else the only configured one."""
    if model_path is not None:
        return model_path
    configured = {f.kind: f.path for f in configured_model_files(settings) if f.kind != CLASSIFIER}
    if flavour is not None:
        path = configured.get(flavour)
        if path is None:
            alias = detector_kind(flavour).alias_setting
            also = f" (or {alias} [CHIMP_{alias.upper()}])" if alias else ""
            raise ConfigError(f"detector_paths.{flavour}{also} is not set; give --model")
        return path
    if len(configured) != 1:
        raise ConfigError(
            f"give --model, or --flavour {'|'.join(DETECTOR_KINDS)} to pick a configured "
            f"detector ({len(configured)} detector paths are configured)"
        )
    return next(iter(configured.values()))


def run_detector_evaluation(
    settings: Settings,
    *,
    annotations: Path | None = None,
    labels_csv: Path | None = None,
    model_path: Path | None = None,
    flavour: str | None = None,
    label_map: str | None = None,
    categories: Sequence[str] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    max_detections: int = 100,
    image_root: Path | None = None,
    progress: Progress | None = None,
) -> DetectorEvaluation:
    """mAP on COCO annotations and/or the crystals/no-crystals table on a labelled CSV."""
    if annotations is None and labels_csv is None:
        raise DatasetError("give --annotations (COCO JSON), --labels (CSV), or both")
    coco = load_coco(annotations, image_root) if annotations is not None else None
    rows = load_rows(labels_csv, label_map, image_root=image_root) if labels_csv else None
    path = detector_path(settings, model_path, flavour)
    from chimp_worker.evaluate.detector import make_detector_analyser

    analyser = make_detector_analyser(
        path,
        device=settings.device,
        clahe_clip_limit=settings.clahe_clip_limit,
        mask_threshold=settings.mask_threshold,
        batch_size=settings.batch_size,
        torch_threads=settings.torch_threads,
        max_detections=max_detections,
        precision=settings.precision,
    )
    test_set = " + ".join(p.stem for p in (annotations, labels_csv) if p is not None)
    return evaluate_detector(
        analyser,
        name=Path(path).name,
        test_set=test_set,
        coco=coco,
        labels=rows,
        score_threshold=settings.score_threshold,
        categories=categories,
        iou_types=iou_types,
        max_detections=max_detections,
        max_pixels=settings.image_max_pixels,
        batch_size=settings.batch_size,
        progress=progress,
    )


def run_hits_evaluation(
    settings: Settings,
    labels_csv: Path,
    *,
    val_csv: Path | None = None,
    choose: bool = False,
    val_fraction: float = 0.3,
    seed: int = 0,
    label_map: str | None = None,
    image_root: Path | None = None,
    progress: Progress | None = None,
) -> HitEvaluation:
    """The three hit rules on a labelled CSV with the worker's own analyser (CHiMP models when
    model files are configured, else the baseline) and its configured thresholds, or with
    thresholds chosen on ``val_csv`` / a held-out split."""
    from chimp_worker.evaluate.hits import evaluate_hits
    from chimp_worker.wiring import make_analyser, make_hit_policy

    rows = load_rows(labels_csv, label_map, image_root=image_root)
    validation = load_rows(val_csv, label_map, image_root=image_root) if val_csv else None
    if validation is not None:
        choose = True
    analyser = make_analyser(settings)
    policy = make_hit_policy(settings)
    return evaluate_hits(
        analyser,
        rows,
        test_set=Path(labels_csv).stem,
        thresholds=policy.for_analyser(analyser.name),
        validation_rows=validation,
        choose=choose,
        val_fraction=val_fraction,
        seed=seed,
        min_detector_score=settings.score_threshold,
        max_pixels=settings.image_max_pixels,
        batch_size=settings.batch_size,
        progress=progress,
    )
