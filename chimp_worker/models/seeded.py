"""Seeded model files in exactly the published formats, for tests, the demo and benchmarks.

Real architectures, seeded weights: a file (and every output computed with it) is the same on
every run, so it can stand in for the published weights wherever those cannot be downloaded.
They find drops and crystals mechanically, not meaningfully: never use them for real analysis.
Building and saving takes seconds (the detector file is ~170 MB).

``make_detector_file(..., confident=True)`` (the default) adjusts only the final layers so the
detector *finds things* deterministically: random heads score almost every proposal as one
class, or none, and random box deltas stretch boxes into slivers. The class-score layer is
calibrated on the box-head features of one rendered micrograph (``render_micrograph(flavour,
seed, size=(320, 256))``) so that a few per cent of its proposals score >= 0.6 (for XChem,
drops and crystals alike); the mask logits are biased up so masks are solid blobs, not
speckle; the RPN's and the box head's deltas are zeroed so boxes are anchor-shaped.
``confident=False`` leaves the seeded random weights untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.detector_kinds import DETECTOR_KINDS
from chimp_worker.models.classifier import (
    DEFAULT_CLASSIFIER_TYPE,
    build_classifier,
    save_classifier_checkpoint,
)
from chimp_worker.models.detector import build_detector, save_detector_state_dict
from chimp_worker.models.preprocessing import detector_input

# Shares of the calibration image's proposals that should score >= 0.6 for each class.
_CRYSTAL_SHARE = 0.012
_DROP_SHARE = 0.004
_LABEL_SHARES = {"crystal": _CRYSTAL_SHARE, "drop": _DROP_SHARE}
_OTHER_SHARE = 0.004  # a label of a detector kind other than drops and crystals
_CONFIDENT_LOGIT = float(np.log(0.6 / 0.4)) + 0.5
_LOGIT_SPREAD = 4.0  # std of each foreground logit over proposals after calibration
_MASK_LOGIT_BIAS = 1.5


def make_classifier_file(
    path: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    seed: int = 0,
    *,
    model_type: str = DEFAULT_CLASSIFIER_TYPE,
    data_parallel: bool = False,
) -> Path:
    """A classifier checkpoint in the published layout (numpy float64 loss_val included)."""
    torch.manual_seed(seed)
    model = build_classifier(len(class_names), model_type)
    _randomise_batch_norm_statistics(model, seed)
    optimizer = torch.optim.AdamW(model.get_submodule("head.fc").parameters(), lr=1e-4)
    return save_classifier_checkpoint(
        model,
        class_names,
        path,
        model_type,
        loss_val=0.522,
        optimizer_state=optimizer.state_dict(),
        data_parallel=data_parallel,
    )


def _randomise_batch_norm_statistics(model: torch.nn.Module, seed: int) -> None:
    """Give the head's batch norms trained-looking statistics so they are not identities."""
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            # typed optional (None without track_running_stats); the head's batch norms track them
            assert module.running_mean is not None
            assert module.running_var is not None
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def make_detector_file(
    path: Path,
    flavour: str = "vmxi",
    seed: int = 0,
    *,
    confident: bool = True,
    wrapped: bool = False,
    data_parallel: bool = False,
) -> Path:
    """A detector state_dict file (raw, or under ``model_state_dict`` when ``wrapped``)."""
    if flavour not in DETECTOR_KINDS:
        raise ValueError(f"flavour must be one of {sorted(DETECTOR_KINDS)}, got {flavour!r}")
    torch.manual_seed(seed)
    labels = DETECTOR_KINDS[flavour].labels
    model = build_detector(len(labels))
    if confident:
        _make_confident(model, flavour, seed, labels)
    return save_detector_state_dict(model, path, wrapped=wrapped, data_parallel=data_parallel)


def _box_head_features(model: torch.nn.Module, flavour: str, seed: int) -> torch.Tensor:
    """Box-head features (proposals, 1024) of one rendered micrograph."""
    from chimp_worker.mock_imager.synthetic import render_micrograph

    pixels, _ = render_micrograph(flavour, seed, size=(320, 256))
    captured: list[torch.Tensor] = []
    hook = model.get_submodule("roi_heads.box_predictor").register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0].detach().clone())
    )
    try:
        with torch.inference_mode():
            model([torch.from_numpy(detector_input(pixels))])
    finally:
        hook.remove()
    return captured[0]


def _make_confident(model: torch.nn.Module, flavour: str, seed: int, labels: Sequence[str]) -> None:
    """Foreground logits along one seeded random direction of the box-head features.

    The direction is made orthogonal to the calibration image's mean feature vector: most of
    what differs between images is the overall activation level along that mean, so without
    it the share of confident proposals stays similar from image to image. For XChem the
    crystal logit is the negated drop logit, so a proposal favours one class or the other.
    Each class's bias puts its own target share of the calibration proposals above 0.6; the
    background logit is zero.
    """
    # Layers are reached through ``get_parameter`` (typed, and it fails loudly on a wrong
    # path) rather than attribute chains, which nn.Module types as ``Tensor | Module``.
    with torch.no_grad():  # random RPN deltas also make slivers; proposals become anchors
        model.get_parameter("rpn.head.bbox_pred.weight").zero_()
        model.get_parameter("rpn.head.bbox_pred.bias").zero_()
    features = _box_head_features(model, flavour, seed).double()
    class_weight = model.get_parameter("roi_heads.box_predictor.cls_score.weight")
    class_bias = model.get_parameter("roi_heads.box_predictor.cls_score.bias")
    direction = class_weight.detach().double()[1]
    mean_direction = features.mean(dim=0)
    mean_direction = mean_direction / mean_direction.norm().clamp_min(1e-12)
    direction = direction - (direction @ mean_direction) * mean_direction
    projection = features @ direction
    scale = _LOGIT_SPREAD / float(projection.std().clamp_min(1e-6))
    num_classes = class_weight.shape[0]
    weight = torch.zeros_like(class_weight, dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    # (sign, share) per foreground label, signs alternating: VMXi crystals; XChem drops
    # (fewer: one drop per well) and crystals.
    plan = [
        (1.0 if index % 2 == 0 else -1.0, _LABEL_SHARES.get(label, _OTHER_SHARE))
        for index, label in enumerate(labels[1:])
    ]
    for index, (sign, share) in enumerate(plan, start=1):
        values = sign * scale * projection
        weight[index] = sign * scale * direction
        # With the other classes far below, score = sigmoid(logit): put the top ``share``
        # of proposals a margin above logit(0.6).
        bias[index] = _CONFIDENT_LOGIT - float(torch.quantile(values, 1.0 - share))
    with torch.no_grad():
        class_weight.copy_(weight.float())
        class_bias.copy_(bias.float())
        model.get_parameter("roi_heads.mask_predictor.mask_fcn_logits.bias").add_(_MASK_LOGIT_BIAS)
        # Random box deltas stretch boxes into slivers; without them boxes are the proposals.
        model.get_parameter("roi_heads.box_predictor.bbox_pred.weight").zero_()
        model.get_parameter("roi_heads.box_predictor.bbox_pred.bias").zero_()
