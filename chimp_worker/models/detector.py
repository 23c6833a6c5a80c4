"""The CHiMP detectors: torchvision Mask R-CNN ResNet50-FPN v1 with the published heads.

VMXi detector: 2 classes (background, crystal). XChem detector: 3 classes (background, drop,
crystal); the kinds and their labels are data in ``chimp_worker.detector_kinds``. Files are
raw state_dicts (or a dict with ``model_state_dict``), possibly with ``module.`` prefixes.
Nothing is downloaded: the backbone is built with ``weights=None``.

Speed without changing results: the final score threshold is applied *inside* the model
(``roi_heads.score_thresh``) instead of the reference's 0.05 followed by filtering. NMS is
greedy by score, so a detection scoring below the threshold can only suppress detections that
score even lower; dropping those before NMS therefore leaves the same surviving set, and the
mask head and the full-size mask paste only run for detections that are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops.misc import FrozenBatchNorm2d

from chimp_worker.analysis import Detection, MaskCrop, TargetRule
from chimp_worker.detector_kinds import (
    DETECTOR_KINDS,
    DetectorKind,
    detector_kind,
    kind_for_classes,
)
from chimp_worker.errors import ModelFileError
from chimp_worker.geometry import mask_centroid, published_centroid
from chimp_worker.models.checkpoints import (
    detector_state_dict,
    file_kind,
    file_sha256,
    load_state_strict,
    read_model_file,
)
from chimp_worker.models.masks import paste_regions, pasted_region, resize_region_to_mask
from chimp_worker.models.preprocessing import DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH

__all__ = [
    "DETECTOR_ARCHITECTURE",
    "REFERENCE_SCORE_THRESHOLD",
    "LoadedDetector",
    "build_detector",
    "detections_from_output",
    "detector_from_contents",
    "label_names",
    "load_detector",
    "model_score_threshold",
    "save_detector_state_dict",
]

DETECTOR_ARCHITECTURE = "maskrcnn_resnet50_fpn"
# torchvision's default, which the published tooling runs with before filtering at 0.6.
REFERENCE_SCORE_THRESHOLD = 0.05
_BOX_PREDICTOR_IN = 1024
_MASK_PREDICTOR_IN = 256
_MASK_HIDDEN = 256


def label_names(num_classes: int) -> tuple[str, ...]:
    """Label name for each class index of a detector with ``num_classes`` classes."""
    return kind_for_classes(num_classes).labels


def build_detector(
    num_classes: int,
    *,
    box_score_thresh: float = REFERENCE_SCORE_THRESHOLD,
    detections_per_img: int = 100,
) -> MaskRCNN:
    """Mask R-CNN ResNet50-FPN v1 with the published predictors, random weights, eval mode.

    The backbone is what ``maskrcnn_resnet50_fpn`` builds for the COCO weights the authors
    fine-tuned (frozen batch norm, three trainable stages), so a published state_dict has
    exactly these keys; ``weights=None`` everywhere, so nothing is downloaded. Box predictor
    ``FastRCNNPredictor(1024, C)``, mask predictor ``MaskRCNNPredictor(256, 256, C)``;
    torchvision's transform defaults (min_size 800, max_size 1333) stay.
    """
    label_names(num_classes)  # validates
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    model = MaskRCNN(
        backbone,
        num_classes=91,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=detections_per_img,
    )
    model.roi_heads.box_predictor = FastRCNNPredictor(_BOX_PREDICTOR_IN, num_classes)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(
        _MASK_PREDICTOR_IN, _MASK_HIDDEN, num_classes
    )
    return model.eval()


def save_detector_state_dict(
    model: torch.nn.Module, path: Path, *, wrapped: bool = False, data_parallel: bool = False
) -> Path:
    """Write a detector file as published: a raw state_dict (``wrapped``: under
    ``model_state_dict``; ``data_parallel``: keys prefixed with ``module.``)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if data_parallel:
        state = {f"module.{key}": value for key, value in state.items()}
    contents: object = {"model_state_dict": state} if wrapped else state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, path)
    return path


def model_score_threshold(score_threshold: float) -> float:
    """The ``roi_heads.score_thresh`` that keeps exactly the scores >= ``score_threshold``.

    torchvision keeps ``score > thresh`` on float32 scores; the contract keeps ``>= 0.6``. The
    largest float32 below float32(threshold) makes the strict test an inclusive one.
    """
    if score_threshold <= 0:
        return 0.0
    threshold = np.float32(score_threshold)
    return float(np.nextafter(threshold, np.float32(-np.inf)))


@dataclass(frozen=True, eq=False)
class LoadedDetector:
    """A detector ready for inference, with what identifies it in results."""

    model: MaskRCNN
    num_classes: int
    path: Path
    sha256: str
    kind_name: str | None = None  # None: the kind its number of classes says

    @property
    def kind(self) -> DetectorKind:
        if self.kind_name is not None:
            return detector_kind(self.kind_name)
        return kind_for_classes(self.num_classes)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.kind.labels

    @property
    def flavour(self) -> str:
        return self.kind.name

    def set_score_threshold(self, model_threshold: float) -> None:
        """Score threshold applied inside the model (before NMS), see module docstring."""
        self.model.roi_heads.score_thresh = float(model_threshold)

    def __call__(
        self, batch: Sequence[torch.Tensor], *, paste_masks: bool = True
    ) -> list[dict[str, torch.Tensor]]:
        """Raw torchvision outputs for (3, 1352, 1688) inputs in 0..1, in model coordinates.

        ``paste_masks=False`` runs the same eval forward but leaves each mask as the mask
        head's (1, 28, 28) probabilities instead of pasting it into a full-size map;
        ``detections_from_output`` pastes kept masks around their boxes only.
        """
        if paste_masks:
            return self.model(list(batch))
        return _forward_unpasted(self.model, list(batch))


def _forward_unpasted(model: MaskRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``GeneralizedRCNN.forward`` in eval mode, less ``paste_masks_in_image``."""
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    if any(feature.dtype != torch.float32 for feature in features.values()):
        # bf16: roi_align computes in fp32 and would cast each level again on every call.
        features = {name: feature.float().contiguous() for name, feature in features.items()}
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    for detection, resized, original in zip(
        detections, image_list.image_sizes, original_sizes, strict=True
    ):
        detection["boxes"] = resize_boxes(detection["boxes"], resized, original)
    return detections


def load_detector(
    path: Path,
    expected_classes: int | None = None,
    role: str | None = None,
    *,
    kind: str | None = None,
) -> LoadedDetector:
    """Load a detector file (raw or wrapped state_dict); ModelFileError when it is not one.

    ``kind`` (a ``detector_kinds`` name) or ``expected_classes`` (2 for VMXi, 3 for XChem)
    refuses another kind's file; ``role`` names the file in messages.
    """
    path = Path(path)
    title = role or (detector_kind(kind).title if kind else "detector")
    contents = read_model_file(path, title)
    return detector_from_contents(contents, path, expected_classes, role, kind=kind)


def detector_from_contents(
    contents: object,
    path: Path,
    expected_classes: int | None = None,
    role: str | None = None,
    *,
    kind: str | None = None,
) -> LoadedDetector:
    """``load_detector`` for a file already read with ``read_model_file``."""
    if kind is not None:
        expected = detector_kind(kind)
        expected_classes = expected.num_classes
        role = role or expected.title
    role = role or "detector"
    state = detector_state_dict(contents)
    if state is None:
        if file_kind(contents) == "classifier":
            raise ModelFileError(
                f"{role} file {path} is a classifier checkpoint, not a Mask R-CNN detector; "
                "set it as classifier_path instead"
            )
        raise ModelFileError(
            f"{role} file {path} is not a Mask R-CNN state_dict (no roi_heads.box_predictor keys)"
        )
    # A model trained with plain BatchNorm2d carries counters frozen batch norm does not have.
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    class_weight = state.get("roi_heads.box_predictor.cls_score.weight")
    if class_weight is None or class_weight.ndim != 2:
        raise ModelFileError(f"{role} file {path} lacks roi_heads.box_predictor.cls_score.weight")
    num_classes = int(class_weight.shape[0])
    if expected_classes is not None and num_classes != expected_classes:
        raise ModelFileError(
            f"{role} file {path} has {num_classes} classes, expected {expected_classes} "
            f"({_kinds_described()})"
        )
    try:
        kind_for_classes(num_classes)
    except ValueError:
        raise ModelFileError(
            f"{role} file {path} has {num_classes} classes; CHiMP detectors have "
            f"{' or '.join(sorted({str(k.num_classes) for k in DETECTOR_KINDS.values()}))}"
        ) from None
    model = build_detector(num_classes)
    load_state_strict(model, state, path, role)
    return LoadedDetector(
        model=model.eval(),
        num_classes=num_classes,
        path=path,
        sha256=file_sha256(path),
        kind_name=kind,
    )


def _kinds_described() -> str:
    """'the VMXi detector has 2: background, crystal; the XChem detector 3: ...'"""
    parts = [
        f"the {k.title} {'has ' if i == 0 else ''}{k.num_classes}: {', '.join(k.labels)}"
        for i, k in enumerate(DETECTOR_KINDS.values())
    ]
    return "; ".join(parts)


def detections_from_output(
    output: Mapping[str, torch.Tensor],
    *,
    original_height: int,
    original_width: int,
    labels: Sequence[str],
    score_threshold: float,
    mask_threshold: float,
    model_role: str | None = None,
    target_rule: TargetRule = TargetRule.PUBLISHED,
) -> list[Detection]:
    """Kept detections of one image in original-image pixels.

    ``output`` is torchvision's result for a 1352 x 1688 input: boxes (N, 4) xyxy, scores (N,),
    labels (N,), masks either pasted, (N, 1, 1352, 1688) probabilities, or as the mask head
    gives them, (N, 1, 28, 28) (``LoadedDetector(..., paste_masks=False)``): these are pasted
    here around their boxes only, with the same values. Detections scoring >= score_threshold
    are kept; boxes are scaled by (orig_w / 1688, orig_h / 1352).

    Each kept mask is thresholded at > mask_threshold twice: at the model-input size, as the
    published tools do (``Detection.model_mask``, a crop around the box), and resized
    (bilinear, half-pixel centres, only around its box: ``masks.py``) to the original size
    (``Detection.mask``, for overlays, evaluation and the mask area). Both are crops around
    the box: no whole-frame array per detection. The centroid follows
    ``target_rule``: ``published`` from the model-input mask (``geometry.published_centroid``),
    ``original`` from the resized one (``geometry.mask_centroid``).
    """
    scores = output["scores"].detach().float().cpu()
    keep = torch.nonzero(scores >= torch.tensor(score_threshold, dtype=torch.float32)).flatten()
    if keep.numel() == 0:
        return []
    model_boxes = output["boxes"].detach().float().cpu()[keep]
    boxes = model_boxes.numpy()
    label_index = output["labels"].detach().cpu()[keep].tolist()
    masks = output["masks"].detach().float().cpu()
    height, width = DETECTOR_INPUT_HEIGHT, DETECTOR_INPUT_WIDTH
    if tuple(masks.shape[-2:]) == (height, width):
        pasted = masks.numpy()
        regions = [
            pasted_region(pasted[index, 0], box)
            for index, box in zip(keep.tolist(), boxes, strict=True)
        ]
    else:
        regions = paste_regions(masks[keep], model_boxes, height, width)
    kept_scores = scores[keep].tolist()
    scale_x = original_width / DETECTOR_INPUT_WIDTH
    scale_y = original_height / DETECTOR_INPUT_HEIGHT
    threshold = np.float32(mask_threshold)
    detections = []
    for box, score, index, (values, origin) in zip(
        boxes, kept_scores, label_index, regions, strict=True
    ):
        model_mask = MaskCrop(values > threshold, origin[0], origin[1], (height, width))
        crop, (top, left) = resize_region_to_mask(
            values, origin, height, width, original_height, original_width, mask_threshold
        )
        mask = MaskCrop(crop, top, left, (original_height, original_width))
        if target_rule == TargetRule.PUBLISHED:
            centroid = published_centroid(model_mask, original_height, original_width)
        else:
            centre = mask_centroid(crop) if crop.size else None
            # Rounding commutes with whole-pixel offsets: same as the full mask's centroid.
            centroid = None if centre is None else (centre[0] + left, centre[1] + top)
        detections.append(
            Detection(
                label=labels[int(index)],
                score=float(score),
                box=(
                    float(box[0] * scale_x),
                    float(box[1] * scale_y),
                    float(box[2] * scale_x),
                    float(box[3] * scale_y),
                ),
                mask=mask,
                mask_area=int(crop.sum()),
                centroid=centroid,
                model_role=model_role,
                model_mask=model_mask,
            )
        )
    return detections
