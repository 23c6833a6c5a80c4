"""Score a detector: COCO mAP (Tables 6 and 8) and the detector as a classifier (Tables 7, 9).

The detector runs through ``ChimpAnalyser`` exactly as in the worker, except that mAP needs the
low-scoring detections too: the analyser is built with torchvision's reference threshold
(0.05) and the worker's threshold (0.6 by default) is applied afterwards for the
"an image is Crystals if at least one crystal is detected" table. Each image's masks are
turned into COCO run-length encodings at once, so memory does not grow with the data set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chimp_worker.errors import DatasetError, ImageError
from chimp_worker.evaluate.classifier import read_image
from chimp_worker.evaluate.coco import (
    IOU_TYPES,
    CocoDataset,
    CocoEvaluation,
    canonical_category,
    detection_results,
    evaluate_detections,
)
from chimp_worker.evaluate.datasets import LabelledImage
from chimp_worker.evaluate.metrics import (
    ClassificationMetrics,
    collapse_to_crystals,
    detector_as_classifier,
)
from chimp_worker.log import get_logger

log = get_logger(__name__)

MAP_SCORE_THRESHOLD = 0.05  # torchvision's default, what COCO mAP is normally computed from

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DetectorEvaluation:
    name: str
    test_set: str
    coco: CocoEvaluation | None
    as_classifier: ClassificationMetrics | None
    score_threshold: float  # the threshold behind ``as_classifier``
    failed: tuple[tuple[str, str], ...] = ()  # (image path, why) for unreadable images
    crystals_per_image: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "detector",
            "model": self.name,
            "test_set": self.test_set,
            "coco": self.coco.as_dict() if self.coco else None,
            "as_classifier": {
                "score_threshold": self.score_threshold,
                "metrics": self.as_classifier.as_dict(),
            }
            if self.as_classifier
            else None,
            "failed_images": [{"path": p, "error": e} for p, e in self.failed],
            "crystals_per_image": self.crystals_per_image,
        }


@dataclass
class _ImageJob:
    path: Path
    coco_image: dict[str, Any] | None = None
    truth: str | None = None  # four-class or binary label for the classification table


def _jobs(coco: CocoDataset | None, labels: Sequence[LabelledImage] | None) -> list[_ImageJob]:
    """One job per distinct image file, whether it comes from the COCO set, the CSV or both."""
    jobs: dict[Path, _ImageJob] = {}
    if coco is not None:
        for image in coco.images:
            path = coco.image_path(image).resolve()
            jobs[path] = _ImageJob(path, coco_image=image)
    for row in labels or ():
        path = row.path.resolve()
        jobs.setdefault(path, _ImageJob(path)).truth = row.label
    return list(jobs.values())


def evaluate_detector(
    analyser: Any,
    *,
    name: str,
    test_set: str,
    coco: CocoDataset | None = None,
    labels: Sequence[LabelledImage] | None = None,
    score_threshold: float = 0.6,
    categories: Sequence[str] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    max_detections: int = 100,
    max_pixels: int = 40_000_000,
    batch_size: int = 2,
    progress: Progress | None = None,
) -> DetectorEvaluation:
    """Run the analyser's detector over the images and compute the paper's detector tables.

    ``coco`` gives mAP. ``labels`` (a labelled CSV, four-class or crystals/no crystals) gives
    the classification table; without it the table uses the COCO truth (an image with at least
    one annotated crystal is 'crystals'). ``categories`` default to the COCO categories the
    detector can predict.
    """
    if coco is None and labels is None:
        raise DatasetError("give COCO annotations, a labelled CSV, or both")
    detector_labels = _detector_labels(analyser)
    if coco is not None and categories is None:
        categories = [c for c in coco.categories if c in detector_labels]
        if not categories:
            raise DatasetError(
                f"the annotations' categories ({', '.join(coco.categories)}) include none the "
                f"detector predicts ({', '.join(detector_labels)})"
            )
    jobs = _jobs(coco, labels)
    category_ids = coco.categories if coco is not None else {}  # COCO jobs only with coco
    results: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    counts: dict[str, int | None] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        loaded = []
        for job in chunk:
            try:
                loaded.append((job, read_image(job.path, max_pixels)))
            except ImageError as exc:
                log.warning("evaluate.image_failed", path=str(job.path), reason=exc.reason)
                failed.append((str(job.path), str(exc)))
                counts[str(job.path)] = None
        analyses = analyser.analyse([image for _, image in loaded]) if loaded else []
        for (job, image), analysis in zip(loaded, analyses, strict=True):
            if job.coco_image is not None:
                expected = (int(job.coco_image["width"]), int(job.coco_image["height"]))
                if expected != (image.width, image.height):
                    raise DatasetError(
                        f"{job.path} is {image.width} x {image.height} but the annotations say "
                        f"{expected[0]} x {expected[1]}"
                    )
                results.extend(
                    detection_results(job.coco_image["id"], analysis.detections, category_ids)
                )
            counts[str(job.path)] = sum(
                1
                for d in analysis.detections
                if canonical_category(d.label) == "crystal" and d.score >= score_threshold
            )
        if progress is not None:
            progress(len(chunk))

    coco_scores = None
    if coco is not None:
        coco_scores = evaluate_detections(
            coco,
            results,
            categories=categories,
            iou_types=iou_types,
            max_detections=max_detections,
        )
    truth, detected = _classification_inputs(jobs, coco, counts, labels is not None)
    table = detector_as_classifier(truth, detected) if truth else None
    return DetectorEvaluation(
        name=name,
        test_set=test_set,
        coco=coco_scores,
        as_classifier=table,
        score_threshold=score_threshold,
        failed=tuple(failed),
        crystals_per_image=counts,
    )


def _detector_labels(analyser: Any) -> set[str]:
    detectors = getattr(analyser, "detectors", None)
    if not detectors:
        raise DatasetError("the analyser has no detector to evaluate")
    return {label for d in detectors.values() for label in d.labels if label != "background"}


def _classification_inputs(
    jobs: Sequence[_ImageJob],
    coco: CocoDataset | None,
    counts: dict[str, int | None],
    from_labels: bool,
) -> tuple[list[str], list[int | None]]:
    truth: list[str] = []
    detected: list[int | None] = []
    crystal_truth = coco.crystal_counts() if coco is not None else {}
    for job in jobs:
        if from_labels:
            if job.truth is None:
                continue  # a COCO-only image: not part of the labelled test set
            truth.append(collapse_to_crystals([job.truth])[0])
        else:
            if "crystal" not in (coco.categories if coco else {}):
                return [], []
            assert job.coco_image is not None  # without labels every job is a COCO image
            has_crystal = crystal_truth.get(int(job.coco_image["id"]), 0) > 0
            truth.append("crystals" if has_crystal else "no crystals")
        detected.append(counts.get(str(job.path)))
    return truth, detected


def make_detector_analyser(
    path: Path,
    *,
    device: str = "auto",
    clahe_clip_limit: float = 2.0,
    mask_threshold: float = 0.5,
    batch_size: int = 2,
    torch_threads: int = 0,
    max_detections: int = 100,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> Any:
    """A ``ChimpAnalyser`` holding one detector (VMXi or XChem, read from the file) that keeps
    every detection scoring >= 0.05, at most ``max_detections`` per image (COCO's cap), for
    mAP. ``precision="bf16"`` judges the opt-in fast mode the same way."""
    from chimp_worker.models import ChimpAnalyser, configure_threads, load_detector, resolve_device
    from chimp_worker.models.analyser import AnalysisOptions

    configure_threads(torch_threads)
    detector = load_detector(path)
    detector.model.roi_heads.detections_per_img = int(max_detections)
    options = AnalysisOptions(
        score_threshold=MAP_SCORE_THRESHOLD,
        mask_threshold=mask_threshold,
        clahe_clip_limit=clahe_clip_limit,
        batch_size=batch_size,
        precision=precision,
    )
    return ChimpAnalyser(
        detectors={detector.flavour: detector}, options=options, device=resolve_device(device)
    )
