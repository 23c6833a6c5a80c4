"""Inference-time rewrite of the classifier's ConvNeXt blocks for the CPU: same outputs, less work.

Why the classifier was no faster than the published code: about 60 % of ConvNeXt-Tiny's CPU
time is the two linear layers of each block's MLP, and they run through ``addmm`` (MKL's sgemm)
whatever the memory format. Channels-last (the earlier speed-up) only saves the permute copies
around them (a few per cent; here it gave bit-identical outputs in the same time). Around the
matrix multiplies eager mode then makes four more passes over the block's largest activations:
``addmm`` first copies the bias into every row of its output, GELU reads and writes the 4 x wide
hidden layer, the layer scale ``gamma`` multiplies the output, and the residual is added.

Here each block's MLP becomes two oneDNN matmuls with fused epilogues (the primitive torch's
own compiler emits for these patterns, ``torch.ops.mkldnn._linear_pointwise``): bias + GELU
(exact, erf) inside the first, bias + residual add inside the second, with ``gamma`` folded
into the second's weights and bias. Probabilities move by float rounding only (about 1e-7 on
seeded weights; the benchmark prints the difference against the unfused reference).

CPU and fp32 only: under bf16 autocast the matmuls must stay autocast's (eager) ``linear``.
Where the fused primitive is missing (a torch built without oneDNN) or disagrees with eager on
a check at fusing time, blocks stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

import torch
from timm.layers import Mlp
from timm.layers import activations as timm_activations
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from chimp_worker.log import get_logger

__all__ = ["FusedConvNeXtBlock", "fuse_convnext_blocks", "fused_linear_available"]

log = get_logger(__name__)
_CHECK_TOLERANCE = 1e-4  # relative to the block output's largest magnitude


def fused_linear_available() -> bool:
    """Whether this torch has oneDNN's fused linear primitive."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fusable(block: nn.Module) -> TypeGuard[ConvNeXtBlock]:
    """A timm ConvNeXt block whose MLP is Linear -> exact GELU -> Linear, nothing else live."""
    if not isinstance(block, ConvNeXtBlock) or block.use_conv_mlp:
        return False
    mlp = block.mlp
    if not isinstance(mlp, Mlp) or not isinstance(mlp.norm, nn.Identity):
        return False
    if not (isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear)):
        return False
    if mlp.fc1.bias is None or mlp.fc2.bias is None:
        return False
    act = mlp.act
    # timm builds its own GELU module (F.gelu, exact); torch's counts when not approximate.
    exact_gelu = type(act) is timm_activations.GELU or (
        isinstance(act, nn.GELU) and act.approximate == "none"
    )
    return exact_gelu and isinstance(block.shortcut, nn.Identity)


def _mlp_layers(block: ConvNeXtBlock) -> tuple[nn.Linear, nn.Linear]:
    """The MLP's fc1 and fc2 of a block ``_fusable`` accepted (timm types them Conv2d | Linear)."""
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        raise TypeError("only a ConvNeXt block whose MLP is Linear layers can be fused")
    return fc1, fc2


def _bias(layer: nn.Linear) -> torch.Tensor:
    """The bias of a layer ``_fusable`` accepted (it checked there is one)."""
    if layer.bias is None:
        raise TypeError("only a ConvNeXt block whose MLP layers have biases can be fused")
    return layer.bias


class FusedConvNeXtBlock(nn.Module):
    """A ConvNeXt block computed as depthwise conv -> LayerNorm -> fused fc1+GELU ->
    fused fc2+residual (layer scale folded in). Inference only: dropout and drop-path are the
    identity in eval mode and are left out."""

    def __init__(self, block: ConvNeXtBlock) -> None:
        super().__init__()
        self.conv_dw = block.conv_dw
        self.norm = block.norm
        fc1, fc2 = _mlp_layers(block)
        fc2_weight = fc2.weight.detach()
        fc2_bias = _bias(fc2).detach()
        if block.gamma is not None:
            gamma = block.gamma.detach()
            fc2_weight = fc2_weight * gamma[:, None]
            fc2_bias = fc2_bias * gamma
        self.register_buffer("fc1_weight", fc1.weight.detach().clone().contiguous())
        self.register_buffer("fc1_bias", _bias(fc1).detach().clone())
        self.register_buffer("fc2_weight", fc2_weight.clone().contiguous())
        self.register_buffer("fc2_bias", fc2_bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x.permute(0, 2, 3, 1)  # NHWC: contiguous when x is channels-last
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        linear = torch.ops.mkldnn._linear_pointwise
        y = linear(y, self.fc1_weight, self.fc1_bias, "gelu", [], "none")
        y = linear.binary(y, shortcut, self.fc2_weight, self.fc2_bias, "add")
        return y.permute(0, 3, 1, 2)


def _agrees(original: nn.Module, fused: nn.Module, channels: int) -> bool:
    """Both compute the same (to float rounding) on a small random channels-last input."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, channels, 9, 7, generator=generator)
    sample = sample.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = original(sample)
        got = fused(sample)
    scale = float(expected.abs().max()) or 1.0
    return bool(((got - expected).abs().max() / scale) <= _CHECK_TOLERANCE)


def fuse_convnext_blocks(
    model: nn.Module, check: Callable[[nn.Module, nn.Module, int], bool] = _agrees
) -> int:
    """Replace every fusable ConvNeXt block of ``model`` (CPU, eval mode) in place; returns how
    many were replaced. Idempotent. Nothing is replaced when the fused primitive is missing or
    the first block's check against eager fails (logged)."""
    if not fused_linear_available():
        return 0
    parents = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _fusable(child)
    ]
    if not parents:
        return 0
    first = parents[0][2]
    channels = _mlp_layers(first)[0].in_features
    try:
        agrees = check(first, FusedConvNeXtBlock(first), channels)
    except RuntimeError as error:  # the primitive refused these tensors
        log.warning("classifier_fusion_skipped", reason=f"{type(error).__name__}: {error}")
        return 0
    if not agrees:
        log.warning("classifier_fusion_skipped", reason="fused block disagrees with eager")
        return 0
    for parent, name, child in parents:
        setattr(parent, name, FusedConvNeXtBlock(child))
    return len(parents)
