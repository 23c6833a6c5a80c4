"""Score the classifier on an expert-labelled set (Table 5), from the model or from ISPyB.

From the model: every image goes through ``ChimpAnalyser`` -- the same preprocessing, device
and batching as the worker -- so the numbers judge what production would write. From the
database: the top class of each image's rows in ``BLSampleImage_has_AutoScoreClass`` for a
schema (CHIMP by default), matched by ``blSampleImageId`` or ``imageFullPath``. Images that
cannot be read or have no result are kept as "no prediction" (see ``metrics``), never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chimp_worker.analysis import CHIMP_SCHEMA, CLASS_NAMES, ISPYB_SCORE_CLASS, DecodedImage
from chimp_worker.errors import DatasetError, ImageError, ImageMissingError
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.evaluate.metrics import (
    ClassificationMetrics,
    classification_metrics,
    order_classes,
    precision_recall_curve,
)
from chimp_worker.images import decode_image
from chimp_worker.log import get_logger

log = get_logger(__name__)

_CANONICAL_FROM_ISPYB = {ispyb: name for name, ispyb in ISPYB_SCORE_CLASS.items()}
_IN_CHUNK = 500  # ids per IN (...) list: well under every database's parameter limit

Progress = Callable[[int], None]  # called with the number of images just finished


@dataclass(frozen=True)
class ImageOutcome:
    """One labelled image and what the model (or the database) said about it."""

    path: str
    truth: str
    predicted: str | None  # None: no prediction (unreadable image, no result in ISPyB)
    probabilities: Mapping[str, float] | None
    error: str | None = None  # why there is no prediction


@dataclass(frozen=True)
class ClassifierEvaluation:
    """Metrics plus the per-image outcomes they were computed from."""

    name: str  # what was judged: the model file or "database:SCHEMA"
    test_set: str
    metrics: ClassificationMetrics
    outcomes: tuple[ImageOutcome, ...]

    def pr_curves(self) -> dict[str, tuple[list[float], list[float]]]:
        """One-vs-rest precision-recall curve per class from the probabilities."""
        scored = [(o.truth, o.probabilities) for o in self.outcomes if o.probabilities is not None]
        curves = {}
        for name in self.metrics.classes:
            scores = [float(probabilities.get(name, 0.0)) for _, probabilities in scored]
            positives = [truth == name for truth, _ in scored]
            if any(positives):
                curves[name] = precision_recall_curve(scores, positives)
        return curves

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "classifier",
            "model": self.name,
            "test_set": self.test_set,
            "metrics": self.metrics.as_dict(),
            "images": [
                {
                    "path": o.path,
                    "truth": o.truth,
                    "predicted": o.predicted,
                    "probabilities": dict(o.probabilities) if o.probabilities else None,
                    "error": o.error,
                }
                for o in self.outcomes
            ],
        }


def _check_truth(rows: Sequence[LabelledImage], classes: Sequence[str]) -> None:
    outside = sorted({row.label for row in rows} - set(classes))
    if outside:
        example = next(row for row in rows if row.label in outside)
        raise DatasetError(
            f"labels {', '.join(repr(o) for o in outside)} are not classes of the model "
            f"({', '.join(classes)}); first on line {example.line}. Use --label-map "
            "(e.g. table1 for VMXi ten-class scores)"
        )


def _finish(
    name: str, test_set: str, outcomes: list[ImageOutcome], classes: Sequence[str]
) -> ClassifierEvaluation:
    metrics = classification_metrics(
        [o.truth for o in outcomes], [o.predicted for o in outcomes], classes=classes
    )
    return ClassifierEvaluation(name, test_set, metrics, tuple(outcomes))


def read_image(path: Path, max_pixels: int) -> DecodedImage:
    """Decode an image file as the worker does; a missing file is an ImageError too."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageMissingError(f"{path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path), max_pixels)


def evaluate_classifier_model(
    rows: Sequence[LabelledImage],
    analyser: Any,
    *,
    name: str,
    test_set: str,
    max_pixels: int = 40_000_000,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> ClassifierEvaluation:
    """Run a ``ChimpAnalyser`` that has a classifier over ``rows`` and score it.

    Images are decoded and analysed ``batch_size`` at a time, so memory stays bounded.
    """
    if getattr(analyser, "classifier", None) is None:
        raise DatasetError("the analyser has no classifier to evaluate")
    classes = order_classes(analyser.classifier.class_names)
    _check_truth(rows, classes)
    outcomes: list[ImageOutcome] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        decoded: list[tuple[LabelledImage, DecodedImage]] = []
        for row in chunk:
            try:
                decoded.append((row, read_image(row.path, max_pixels)))
            except ImageError as exc:
                log.warning("evaluate.image_failed", path=str(row.path), reason=exc.reason)
                outcomes.append(ImageOutcome(str(row.path), row.label, None, None, str(exc)))
        analyses = analyser.analyse([image for _, image in decoded]) if decoded else []
        for (row, _), analysis in zip(decoded, analyses, strict=True):
            outcomes.append(
                ImageOutcome(
                    str(row.path), row.label, analysis.top_class, dict(analysis.probabilities)
                )
            )
        if progress is not None:
            progress(len(chunk))
    order = {str(row.path): n for n, row in enumerate(rows)}
    outcomes.sort(key=lambda o: order[o.path])
    return _finish(name, test_set, outcomes, classes)


def database_predictions(
    session_factory: Any, rows: Sequence[LabelledImage], schema: str = CHIMP_SCHEMA
) -> dict[int, dict[str, float]]:
    """Row index -> {canonical class: probability} for the rows that have results in ISPyB.

    Matching: by ``blSampleImageId`` when the CSV gives it, else by ``imageFullPath`` equal to
    the CSV's path as written or as resolved.
    """
    from sqlalchemy import select

    from chimp_worker.ispyb.database import translate_db_errors
    from chimp_worker.ispyb.tables import (
        BLSampleImage,
        BLSampleImageAutoScoreClass,
        BLSampleImageAutoScoreSchema,
        BLSampleImageHasAutoScoreClass,
    )

    by_id = {row.image_id: n for n, row in enumerate(rows) if row.image_id is not None}
    by_path: dict[str, int] = {}
    for n, row in enumerate(rows):
        if row.image_id is None:
            by_path[row.source_path] = n
            by_path.setdefault(str(row.path), n)
    base = (
        select(
            BLSampleImage.blSampleImageId,
            BLSampleImage.imageFullPath,
            BLSampleImageAutoScoreClass.scoreClass,
            BLSampleImageHasAutoScoreClass.probability,
        )
        .join(
            BLSampleImageHasAutoScoreClass,
            BLSampleImageHasAutoScoreClass.blSampleImageId == BLSampleImage.blSampleImageId,
        )
        .join(
            BLSampleImageAutoScoreClass,
            BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId
            == BLSampleImageHasAutoScoreClass.blSampleImageAutoScoreClassId,
        )
        .join(
            BLSampleImageAutoScoreSchema,
            BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId
            == BLSampleImageAutoScoreClass.blSampleImageAutoScoreSchemaId,
        )
        .where(BLSampleImageAutoScoreSchema.schemaName == schema)
    )
    found: dict[int, dict[str, float]] = {}

    def collect(result: Iterable[Any], key_of: Callable[[Any], int | None]) -> None:
        for image_id, path, score_class, probability in result:
            index = key_of((image_id, path))
            if index is None or probability is None:
                continue
            name = _CANONICAL_FROM_ISPYB.get(score_class, score_class)
            found.setdefault(index, {})[name] = float(probability)

    with translate_db_errors(), session_factory() as session:
        ids = list(by_id)
        for start in range(0, len(ids), _IN_CHUNK):
            id_chunk = ids[start : start + _IN_CHUNK]
            query = base.where(BLSampleImage.blSampleImageId.in_(id_chunk))
            collect(session.execute(query), lambda key: by_id.get(key[0]))
        paths = list(by_path)
        for start in range(0, len(paths), _IN_CHUNK):
            path_chunk = paths[start : start + _IN_CHUNK]
            query = base.where(BLSampleImage.imageFullPath.in_(path_chunk))
            collect(session.execute(query), lambda key: by_path.get(key[1]))
    return found


def evaluate_classifier_database(
    rows: Sequence[LabelledImage],
    session_factory: Any,
    *,
    schema: str = CHIMP_SCHEMA,
    test_set: str,
) -> ClassifierEvaluation:
    """Score the results a worker already wrote, without running any model."""
    _check_truth(rows, CLASS_NAMES)
    found = database_predictions(session_factory, rows, schema)
    outcomes = []
    for n, row in enumerate(rows):
        probabilities = found.get(n)
        if probabilities:
            top = max(probabilities, key=lambda name: probabilities[name])
            outcomes.append(ImageOutcome(str(row.path), row.label, top, probabilities))
        else:
            outcomes.append(
                ImageOutcome(
                    str(row.path), row.label, None, None, f"no {schema} result in the database"
                )
            )
    log.info("evaluate.database", schema=schema, images=len(rows), with_results=len(found))
    return _finish(f"database:{schema}", test_set, outcomes, order_classes(CLASS_NAMES))
