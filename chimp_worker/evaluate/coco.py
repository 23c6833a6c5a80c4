"""COCO-format ground truth and detector scoring with pycocotools (Tables 6 and 8).

mAP is computed by ``pycocotools.cocoeval.COCOeval`` exactly as for the COCO benchmark: AP at
IoU 0.5, 0.75 and the mean over 0.5:0.95 (step 0.05), and by object area (small < 32x32 px,
medium 32x32-96x96, large > 96x96), for boxes ("bbox") and masks ("segm"). Nothing here
re-implements the matching; this module only validates the input, turns the worker's
``Detection`` objects into COCO results and reads the numbers back out. No torch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeGuard, cast

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from chimp_worker.analysis import Detection
from chimp_worker.errors import DatasetError

if TYPE_CHECKING:  # the stubs' (private, type-check-only) names for COCO's JSON shapes
    from pycocotools.coco import _Annotation, _Dataset

IouType = Literal["bbox", "segm"]
IOU_TYPES: tuple[IouType, ...] = ("bbox", "segm")
# COCOeval's stats vector, in order (see COCOeval.summarize).
STAT_NAMES: tuple[str, ...] = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar_1",
    "ar_10",
    "ar_max",
    "ar_small",
    "ar_medium",
    "ar_large",
)
# Category names as the detectors' labels spell them; plural spellings are accepted.
_CATEGORY_ALIASES = {"crystals": "crystal", "drops": "drop"}


def canonical_category(name: str) -> str:
    """'Crystals' -> 'crystal', 'Drops' -> 'drop'; other names are only case-folded."""
    folded = " ".join(str(name).split()).casefold()
    return _CATEGORY_ALIASES.get(folded, folded)


@dataclass(frozen=True)
class CocoDataset:
    """A validated COCO ground truth: the JSON data and where its image files are."""

    data: dict[str, Any]
    image_root: Path

    @property
    def categories(self) -> dict[str, int]:
        """Canonical category name -> category id."""
        return {canonical_category(c["name"]): int(c["id"]) for c in self.data["categories"]}

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.data["images"])

    def image_path(self, image: Mapping[str, Any]) -> Path:
        path = Path(image["file_name"])
        return path if path.is_absolute() else self.image_root / path

    def crystal_counts(self) -> dict[int, int]:
        """Image id -> number of ground-truth crystals (0 for images without any)."""
        crystal_id = self.categories.get("crystal")
        counts = {int(image["id"]): 0 for image in self.data["images"]}
        for annotation in self.data["annotations"]:
            if annotation["category_id"] == crystal_id:
                counts[int(annotation["image_id"])] += 1
        return counts


def _fail(path: Path, message: str) -> DatasetError:
    return DatasetError(f"COCO file {path}: {message}")


def load_coco(path: Path, image_root: Path | None = None) -> CocoDataset:
    """Read and check a COCO instances file; fill ``area`` and ``iscrowd`` where absent.

    Image ``file_name`` entries are relative to ``image_root`` (default: the JSON's folder).
    Raises ``DatasetError`` naming the first problem (missing key, unknown image or category
    id, malformed box or segmentation).
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"COCO file {path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"'{key}' must be a list")
    if not data["images"]:
        raise _fail(path, "has no images")
    image_sizes: dict[int, tuple[int, int]] = {}
    for image in data["images"]:
        try:
            image_sizes[int(image["id"])] = (int(image["height"]), int(image["width"]))
            str(image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"image {image!r} needs id, file_name, width and height") from None
    category_ids = set()
    for category in data["categories"]:
        if "id" not in category or "name" not in category:
            raise _fail(path, f"category {category!r} needs id and name")
        category_ids.add(int(category["id"]))
    for number, annotation in enumerate(data["annotations"]):
        _check_annotation(path, number, annotation, image_sizes, category_ids)
    root = Path(image_root) if image_root is not None else Path(path).resolve().parent
    return CocoDataset(data=data, image_root=root)


def _check_annotation(
    path: Path,
    number: int,
    annotation: dict[str, Any],
    image_sizes: Mapping[int, tuple[int, int]],
    category_ids: set[int],
) -> None:
    where = f"annotation {annotation.get('id', f'#{number}')}"
    if annotation.get("image_id") not in image_sizes:
        raise _fail(path, f"{where} names unknown image_id {annotation.get('image_id')!r}")
    if annotation.get("category_id") not in category_ids:
        raise _fail(path, f"{where} names unknown category_id {annotation.get('category_id')!r}")
    box = annotation.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, int | float) for v in box)
        or box[2] < 0
        or box[3] < 0
    ):
        raise _fail(path, f"{where} needs bbox [x, y, width, height] with width, height >= 0")
    annotation.setdefault("id", number + 1)
    annotation.setdefault("iscrowd", 0)
    segmentation = annotation.get("segmentation")
    if segmentation is not None and segmentation != []:
        height, width = image_sizes[annotation["image_id"]]
        try:
            rles = segmentation_to_rle(segmentation, height, width)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise _fail(path, f"{where} has a malformed segmentation ({exc})") from None
        annotation.setdefault("area", float(mask_utils.area(rles)))
    else:
        annotation.setdefault("area", float(box[2] * box[3]))


class Rle(TypedDict):
    """A compressed COCO run-length encoding: ``counts`` are bytes from pycocotools, str in JSON."""

    size: list[int]
    counts: str | bytes


def _is_iou_type(name: str) -> TypeGuard[IouType]:
    return name in IOU_TYPES


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> Rle:
    """Polygons or (un)compressed RLE -> one compressed RLE (pycocotools' annToRLE logic)."""
    if isinstance(segmentation, list):
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation):
            raise ValueError("each polygon needs at least three x, y pairs")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def mask_to_rle(mask: np.ndarray) -> Rle:
    """Bool (H, W) mask -> compressed RLE with a JSON-ready string ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    rle["counts"] = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return rle


def detection_results(
    image_id: int, detections: Sequence[Detection], category_ids: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The worker's detections for one image as COCO results (bbox xywh, score, mask RLE).

    Detections whose label is not a ground-truth category are left out (a crystal-only data
    set says nothing about drops). A detection without a mask gets no ``segmentation``.
    """
    results = []
    for detection in detections:
        category = category_ids.get(canonical_category(detection.label))
        if category is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in detection.box)
        result: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": category,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(detection.score),
        }
        if detection.mask is not None:
            result["segmentation"] = mask_to_rle(detection.mask.full())
        results.append(result)
    return results


@dataclass(frozen=True)
class ApScores:
    """One row of Tables 6/8: COCOeval's twelve numbers for one IoU type and category.

    ``None`` where pycocotools reports -1 (no ground truth in that size range).
    ``category`` is a category name, or "all" for the mean over the evaluated categories.
    """

    iou_type: str
    category: str
    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    ar_1: float | None
    ar_10: float | None
    ar_max: float | None
    ar_small: float | None
    ar_medium: float | None
    ar_large: float | None


@dataclass(frozen=True)
class PrCurve:
    """Interpolated precision at COCO's 101 recall points, for one IoU threshold."""

    iou_type: str
    category: str
    iou: float
    recall: tuple[float, ...]
    precision: tuple[float, ...]  # -1 entries (undefined) are dropped with their recall


@dataclass(frozen=True)
class CocoEvaluation:
    scores: tuple[ApScores, ...]
    curves: tuple[PrCurve, ...]
    max_detections: int
    images: int
    predictions: int

    def score(self, iou_type: str, category: str = "all") -> ApScores:
        for entry in self.scores:
            if entry.iou_type == iou_type and entry.category == category:
                return entry
        raise KeyError(f"no {iou_type} scores for {category!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_detections": self.max_detections,
            "images": self.images,
            "predictions": self.predictions,
            "scores": [asdict(entry) for entry in self.scores],
        }


def _result_api(ground_truth: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """pycocotools' loadRes without its prints and without its failure on zero results."""
    api = COCO()
    api.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": [],
    }
    for number, result in enumerate(results, start=1):
        entry = dict(result, id=number, iscrowd=0)
        if iou_type == "segm":
            if "segmentation" not in result:
                raise DatasetError(
                    f"a detection on image {result['image_id']} has no mask; "
                    "mask mAP needs every detection's mask"
                )
            entry["area"] = float(mask_utils.area(result["segmentation"]))
            entry["bbox"] = list(mask_utils.toBbox(result["segmentation"]))
        else:
            entry.pop("segmentation", None)
            width, height = result["bbox"][2:]
            entry["area"] = float(width * height)
        api.dataset["annotations"].append(cast("_Annotation", entry))
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _run(
    ground_truth: COCO,
    results: COCO,
    iou_type: IouType,
    category_ids: list[int],
    max_detections: int,
) -> COCOeval:
    evaluator = COCOeval(ground_truth, results, iou_type)
    evaluator.params.catIds = category_ids
    evaluator.params.maxDets = [1, 10, max_detections]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _scores(iou_type: str, category: str, stats: np.ndarray) -> ApScores:
    values = {
        name: (None if v < 0 else float(v)) for name, v in zip(STAT_NAMES, stats, strict=True)
    }
    return ApScores(iou_type=iou_type, category=category, **values)


def _curves(evaluator: COCOeval, iou_type: str, names: Sequence[str]) -> list[PrCurve]:
    precision = evaluator.eval["precision"]  # [iou, recall, category, area, max dets]
    recall_points = evaluator.params.recThrs
    curves = []
    for iou in (0.5, 0.75):
        iou_index = int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))
        for k, name in enumerate(names):
            values = precision[iou_index, :, k, 0, -1]
            keep = values > -1
            curves.append(
                PrCurve(
                    iou_type=iou_type,
                    category=name,
                    iou=iou,
                    recall=tuple(float(r) for r in recall_points[keep]),
                    precision=tuple(float(p) for p in values[keep]),
                )
            )
    return curves


def evaluate_detections(
    dataset: CocoDataset,
    results: Sequence[Mapping[str, Any]],
    *,
    categories: Sequence[str] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    max_detections: int = 100,
) -> CocoEvaluation:
    """COCOeval for each IoU type: the mean over ``categories`` ("all") and each one alone.

    ``categories`` (canonical names) default to every ground-truth category. Images with no
    results count as images where nothing was found (every ground-truth object missed).
    """
    known = dataset.categories
    wanted = [canonical_category(c) for c in categories] if categories else list(known)
    missing = [name for name in wanted if name not in known]
    if missing:
        raise DatasetError(
            f"categories {', '.join(missing)} are not in the annotations "
            f"(they have {', '.join(known)})"
        )
    checked_types = [t for t in iou_types if _is_iou_type(t)]
    bad_types = [t for t in iou_types if not _is_iou_type(t)]
    if bad_types:
        raise DatasetError(f"IoU types must be among {IOU_TYPES}, got {bad_types}")
    image_ids = {int(image["id"]) for image in dataset.images}
    stray = {int(r["image_id"]) for r in results} - image_ids
    if stray:
        raise DatasetError(f"results name images not in the annotations: {sorted(stray)[:5]}")
    ground_truth = COCO()
    ground_truth.dataset = cast("_Dataset", copy.deepcopy(dataset.data))  # checked by load_coco
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    scores: list[ApScores] = []
    curves: list[PrCurve] = []
    result_list = [dict(r) for r in results]
    for iou_type in checked_types:
        api = _result_api(ground_truth, result_list, iou_type)
        ids = [known[name] for name in wanted]
        overall = _run(ground_truth, api, iou_type, ids, max_detections)
        scores.append(_scores(iou_type, "all", overall.stats))
        curves.extend(_curves(overall, iou_type, wanted))
        if len(wanted) > 1:
            for name in wanted:
                alone = _run(ground_truth, api, iou_type, [known[name]], max_detections)
                scores.append(_scores(iou_type, name, alone.stats))
    return CocoEvaluation(
        scores=tuple(scores),
        curves=tuple(curves),
        max_detections=max_detections,
        images=len(image_ids),
        predictions=len(result_list),
    )
