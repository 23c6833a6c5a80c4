"""``ChimpAnalyser``: the CHiMP classifier and detectors behind the ``analysis.Analyser`` protocol.

Images go through two stages: ``prepare`` (pure CPU preprocessing, safe to run in a
prefetching thread) and ``analyse_prepared`` (batched model passes under
``torch.inference_mode``, then post-processing and geometry). ``analyse`` does both.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from chimp_worker.analysis import (
    CHIMP_SCHEMA,
    AnalysisOptions,
    CrystalTarget,
    DecodedImage,
    Detection,
    DispensePoint,
    ImageAnalysis,
    ModelRef,
    TargetRule,
)
from chimp_worker.detector_kinds import (
    DETECTOR_KINDS,
    configured_model_files,
    crystal_role,
    detector_kind,
    drop_role,
)
from chimp_worker.errors import ConfigError
from chimp_worker.geometry import dispense_point, published_dispense_point
from chimp_worker.log import get_logger
from chimp_worker.models.classifier import LoadedClassifier, load_classifier
from chimp_worker.models.classifier_fusion import fuse_convnext_blocks
from chimp_worker.models.detector import (
    DETECTOR_ARCHITECTURE,
    LoadedDetector,
    detections_from_output,
    load_detector,
    model_score_threshold,
)
from chimp_worker.models.fusion import fold_frozen_batchnorm
from chimp_worker.models.prefetch import prefetched
from chimp_worker.models.preprocessing import classifier_input, detector_input

if TYPE_CHECKING:
    from chimp_worker.config import Settings

__all__ = [
    "AnalysisOptions",
    "ChimpAnalyser",
    "PreparedImage",
    "bf16_supported",
    "configure_threads",
    "resolve_device",
]

Item = TypeVar("Item")
log = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A decoded image with its model inputs computed (float32 CHW arrays)."""

    image: DecodedImage
    classifier_input: np.ndarray | None
    detector_input: np.ndarray | None
    timings_ms: dict[str, float] = field(default_factory=dict)


def resolve_device(setting: str) -> torch.device:
    """``auto``: CUDA when a GPU is usable, else the CPU; ``cuda`` without one is a ConfigError."""
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" or setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if setting == "cuda":
            raise ConfigError("device [CHIMP_DEVICE]: cuda was requested but no GPU is usable")
        return torch.device("cpu")
    raise ConfigError(f"device [CHIMP_DEVICE]: expected auto, cpu or cuda, got {setting!r}")


def bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower
    than fp32 (about 10x on an AVX2-only CPU)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_threads(torch_threads: int) -> int:
    """Set torch's intra-op thread count (0: one per core this process may use)."""
    count = torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ChimpAnalyser:
    """Classifier probabilities, detections, crystal targets and the dispense point per image.

    ``detectors`` maps detector kind names (``detector_kinds``) to loaded detectors. Crystal
    targets come from the first kind there that supplies crystals (the VMXi detector, or the
    XChem detector's crystals when it is the only one); the dispense point needs a kind that
    supplies drops (the XChem detector).
    """

    name = "chimp"
    schema_name = CHIMP_SCHEMA

    def __init__(
        self,
        *,
        classifier: LoadedClassifier | None = None,
        detectors: Mapping[str, LoadedDetector] | None = None,
        options: AnalysisOptions | None = None,
        device: torch.device | None = None,
    ) -> None:
        detectors = detectors or {}
        if classifier is None and not detectors:
            raise ConfigError(
                "the CHiMP analyser needs at least one model file: set classifier_path or "
                f"detector_paths ({', '.join(DETECTOR_KINDS)})"
            )
        self.options = options or AnalysisOptions()
        self.device = device or torch.device("cpu")
        self.classifier = classifier
        # By role, in registry order (the order results list their models in).
        kinds = [detector_kind(name) for name in detectors]
        self.detectors: dict[str, LoadedDetector] = {
            kind.role: detectors[kind.name] for kind in DETECTOR_KINDS.values() if kind in kinds
        }
        inside = self.options.model_score_threshold
        if inside is None:
            inside = model_score_threshold(self.options.score_threshold)
        for detector in self.detectors.values():
            if self.options.fold_batchnorm or self.options.precision == "bf16":
                fold_frozen_batchnorm(detector.model)
            detector.model.to(self.device)
            detector.set_score_threshold(inside)
            if self.options.precision == "bf16":
                # oneDNN's bf16 convolutions are fastest on channels-last weights.
                detector.model.backbone.to(memory_format=torch.channels_last)
                detector.model.rpn.to(memory_format=torch.channels_last)
        if classifier is not None:
            classifier.model.to(self.device)
            fusable = self.device.type == "cpu" and self.options.precision == "fp32"
            if self.options.fuse_classifier and fusable:
                fuse_convnext_blocks(classifier.model)
            if self.options.channels_last:
                classifier.model.to(memory_format=torch.channels_last)
        refs = []
        if classifier is not None:
            refs.append(ModelRef("classifier", classifier.model_type, classifier.sha256))
        refs.extend(
            ModelRef(role, DETECTOR_ARCHITECTURE, detector.sha256)
            for role, detector in self.detectors.items()
        )
        self.models: tuple[ModelRef, ...] = tuple(refs)
        self.target_rule: str = str(self.options.target_rule)

    @classmethod
    def from_settings(cls, settings: Settings) -> ChimpAnalyser:
        """Load the configured model files and apply the thread and device settings."""
        configure_threads(settings.torch_threads)
        classifier = None
        detectors: dict[str, LoadedDetector] = {}
        for model_file in configured_model_files(settings):
            if model_file.kind == "classifier":
                classifier = load_classifier(model_file.path)
            else:
                detectors[model_file.kind] = load_detector(model_file.path, kind=model_file.kind)
        device = resolve_device(settings.device)
        if settings.precision == "bf16" and device.type == "cpu" and not bf16_supported():
            log.warning(
                "bf16_emulated",
                detail="this CPU has no AVX512-BF16/AMX: bf16 will be slower than fp32",
            )
        return cls(
            classifier=classifier,
            detectors=detectors,
            options=AnalysisOptions.from_settings(settings),
            device=device,
        )

    @property
    def crystal_role(self) -> str | None:
        """The detector role whose crystals become targets."""
        return crystal_role(self.detectors)

    @property
    def drop_role(self) -> str | None:
        """The detector role whose drops place the dispense point."""
        return drop_role(self.detectors)

    # --- stage 1: preprocessing (CPU only, thread-safe) -----------------------------------

    def prepare(self, image: DecodedImage) -> PreparedImage:
        """Compute the model inputs of one image; no torch, so it can overlap inference."""
        timings: dict[str, float] = {}
        classifier_array = detector_array = None
        if self.classifier is not None:
            start = time.perf_counter()
            classifier_array = classifier_input(image.pixels, self.options.classifier_input_size)
            timings["classifier_preprocess"] = _elapsed_ms(start)
        if self.detectors:
            start = time.perf_counter()
            detector_array = detector_input(image.pixels, self.options.clahe_clip_limit)
            timings["detector_preprocess"] = _elapsed_ms(start)
        return PreparedImage(image, classifier_array, detector_array, timings)

    # --- stage 2: models, post-processing, geometry --------------------------------------

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        """Analyse images, preparing the next ones on a helper thread during inference."""
        results: list[ImageAnalysis] = []
        batch: list[PreparedImage] = []
        size = self.options.batch_size
        with torch.inference_mode():
            stage = (
                prefetched(images, self.prepare, ahead=size)
                if self.options.prefetch
                else map(self.prepare, images)
            )
            for prepared in stage:
                batch.append(prepared)
                if len(batch) == size:
                    results.extend(self._analyse_batch(batch))
                    batch = []
            if batch:
                results.extend(self._analyse_batch(batch))
        return results

    def analyse_prepared(self, prepared: Sequence[PreparedImage]) -> list[ImageAnalysis]:
        results: list[ImageAnalysis] = []
        with torch.inference_mode():
            for chunk in _chunks(prepared, self.options.batch_size):
                results.extend(self._analyse_batch(chunk))
        return results

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.options.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def classify(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Softmax probabilities (N, classes), on the CPU, of prepared classifier inputs."""
        assert self.classifier is not None
        tensor = torch.from_numpy(np.stack(arrays)).to(self.device)
        if self.options.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.classifier.probabilities(tensor).cpu()

    def _step(self, count: int) -> int:
        # On the CPU one image already keeps every core busy: batching buys nothing there.
        # It costs: the classifier's 512 x 512 MLP activations outgrow the caches (batch 4:
        # 418 ms/image against 358 at 1, channels-last, 2 cores) and the detector holds
        # several images' activations at once (peak RSS 2.8 GiB at 4 against 1.7 at 1,
        # VMXi). GPUs get whole batches.
        return 1 if self.device.type == "cpu" else count

    def _classify_batch(
        self, batch: Sequence[PreparedImage], timings: list[dict[str, float]]
    ) -> list[dict[str, float] | None]:
        probabilities: list[dict[str, float] | None] = [None] * len(batch)
        if self.classifier is None:
            return probabilities
        for group in _chunks(range(len(batch)), self._step(len(batch))):
            start = time.perf_counter()
            rows = self.classify([batch[i].classifier_input for i in group])  # type: ignore[misc]  # set whenever a classifier is loaded
            share = _elapsed_ms(start) / len(group)
            for i, row in zip(group, rows, strict=True):
                probabilities[i] = self.classifier.as_mapping(row)
                timings[i]["classifier"] = share
        return probabilities

    def _detect_batch(
        self, batch: Sequence[PreparedImage], timings: list[dict[str, float]]
    ) -> list[dict[str, list[Detection]]]:
        detections: list[dict[str, list[Detection]]] = [{} for _ in batch]
        for role, detector in self.detectors.items():
            for group in _chunks(range(len(batch)), self._step(len(batch))):
                start = time.perf_counter()
                inputs = [torch.from_numpy(batch[i].detector_input).to(self.device) for i in group]
                with self._autocast():
                    outputs = detector(inputs, paste_masks=self.options.paste_full_masks)
                share = _elapsed_ms(start) / len(group)
                for i, output in zip(group, outputs, strict=True):
                    timings[i][role] = share
                    start = time.perf_counter()
                    detections[i][role] = self.postprocess(role, output, batch[i].image)
                    timings[i][f"{role}_postprocess"] = _elapsed_ms(start)
                del outputs  # free the pasted masks before the next image
        return detections

    def _analyse_batch(self, batch: Sequence[PreparedImage]) -> list[ImageAnalysis]:
        timings = [dict(item.timings_ms) for item in batch]
        for item, timing in zip(batch, timings, strict=True):
            timing["fetch"] = item.image.fetch_ms
            timing["decode"] = item.image.decode_ms
        # Detectors first: the helper threads that fetch, decode and prepare the next batch
        # start with this one and finish within the first detector pass, so the classifier
        # then runs on quiet cores, as in the published tool. Run first, it shared the 2 cores
        # with them and took about a third longer per image (the same work, moved).
        detections = self._detect_batch(batch, timings)
        probabilities = self._classify_batch(batch, timings)
        return [
            self._assemble(item, probability, found, timing)
            for item, probability, found, timing in zip(
                batch, probabilities, detections, timings, strict=True
            )
        ]

    def postprocess(
        self,
        role: str,
        output: dict[str, torch.Tensor],
        image: DecodedImage,
        rule: TargetRule | None = None,
    ) -> list[Detection]:
        """One image's detections from one detector's raw output, by ``rule`` (default: the
        configured one)."""
        return detections_from_output(
            output,
            original_height=image.height,
            original_width=image.width,
            labels=self.detectors[role].labels,
            score_threshold=self.options.score_threshold,
            mask_threshold=self.options.mask_threshold,
            model_role=role,
            target_rule=rule or self.options.target_rule,
        )

    def targets(
        self,
        found: dict[str, list[Detection]],
        image: DecodedImage,
        rule: TargetRule | None = None,
    ) -> tuple[list[Detection], list[CrystalTarget], DispensePoint | None]:
        """(all detections, crystal targets, dispense point) of one image by ``rule``.

        Crystal targets are the crystal-role detector's centroids (computed by the same rule
        in ``postprocess``); the dispense point needs the drop-role detector (XChem): its
        drops, kept clear of its crystals.
        """
        rule = rule or self.options.target_rule
        detections: list[Detection] = []
        targets: list[CrystalTarget] = []
        for role, role_detections in found.items():
            offset = len(detections)
            detections.extend(role_detections)
            if role != self.crystal_role:
                continue
            for index, detection in enumerate(role_detections):
                if detection.label == "crystal" and detection.centroid is not None:
                    x, y = detection.centroid
                    targets.append(CrystalTarget(x, y, detection.score, offset + index))
        dispense: DispensePoint | None = None
        drops_from = drop_role(found)
        if drops_from is not None:
            drop_detections = found[drops_from]
            drops = [d for d in drop_detections if d.label == "drop"]
            crystals = [d for d in drop_detections if d.label == "crystal"]
            margin = self.options.dispense_margin_px
            if rule == TargetRule.PUBLISHED:
                dispense = published_dispense_point(
                    [d.model_mask for d in drops if d.model_mask is not None],
                    [d.score for d in drops if d.model_mask is not None],
                    [d.model_mask for d in crystals if d.model_mask is not None],
                    image.height,
                    image.width,
                    margin_px=margin,
                )
            else:
                dispense = dispense_point(
                    [d.mask.full() for d in drops if d.mask is not None],
                    [d.score for d in drops if d.mask is not None],
                    [d.mask.full() for d in crystals if d.mask is not None],
                    margin_px=margin,
                )
        return detections, targets, dispense

    def _assemble(
        self,
        item: PreparedImage,
        probabilities: dict[str, float] | None,
        found: dict[str, list[Detection]],
        timings: dict[str, float],
    ) -> ImageAnalysis:
        start = time.perf_counter()
        detections, targets, dispense = self.targets(found, item.image)
        timings["geometry"] = _elapsed_ms(start)
        return ImageAnalysis(
            analyser=self.name,
            schema_name=self.schema_name,
            models=self.models,
            width=item.image.width,
            height=item.image.height,
            probabilities=probabilities,
            detections=tuple(detections),
            crystal_targets=tuple(targets),
            dispense=dispense,
            timings_ms=timings,
            target_rule=self.target_rule,
        )
