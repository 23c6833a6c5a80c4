"""The classifier's fused ConvNeXt blocks compute what timm's eager blocks compute."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from chimp_worker.models import AnalysisOptions, ChimpAnalyser, classifier_fusion, load_classifier
from chimp_worker.models.classifier import build_classifier
from chimp_worker.models.classifier_fusion import FusedConvNeXtBlock, fuse_convnext_blocks


def trained_looking_classifier() -> torch.nn.Module:
    """Random weights with layer scales of a trained model's size: a fresh timm ConvNeXt has
    gamma = 1e-6, which would hide any error in the blocks' MLPs behind the residuals."""
    torch.manual_seed(3)
    model = build_classifier(4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(torch.rand_like(parameter) * 0.5 + 0.1)
    return model.eval()


def fused_count(model: torch.nn.Module) -> int:
    return sum(isinstance(module, FusedConvNeXtBlock) for module in model.modules())


def test_fused_blocks_give_the_eager_logits_to_float_rounding() -> None:
    eager = trained_looking_classifier()
    fused = copy.deepcopy(eager)
    assert fuse_convnext_blocks(fused) == 18  # ConvNeXt-Tiny: 3 + 3 + 9 + 3 blocks
    assert fused_count(fused) == 18
    fused.to(memory_format=torch.channels_last)
    batch = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 1.5
    with torch.inference_mode():
        expected = eager(batch)
        got = fused(batch.contiguous(memory_format=torch.channels_last))
        plain_layout = fused(batch)  # a contiguous input works too
    assert expected.abs().max() > 0.05  # the blocks really contribute
    assert torch.allclose(got, expected, rtol=0, atol=2e-5)
    assert torch.allclose(plain_layout, expected, rtol=0, atol=2e-5)
    probabilities = torch.softmax(got, dim=1) - torch.softmax(expected, dim=1)
    assert probabilities.abs().max() < 1e-5


def test_fusing_twice_changes_nothing_more() -> None:
    model = trained_looking_classifier()
    assert fuse_convnext_blocks(model) == 18
    assert fuse_convnext_blocks(model) == 0
    assert fused_count(model) == 18


def test_a_failed_check_leaves_every_block_eager() -> None:
    model = trained_looking_classifier()
    assert fuse_convnext_blocks(model, check=lambda original, fused, channels: False) == 0
    assert fused_count(model) == 0


def test_without_the_fused_primitive_nothing_is_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier_fusion, "fused_linear_available", lambda: False)
    model = trained_looking_classifier()
    assert fuse_convnext_blocks(model) == 0
    assert fused_count(model) == 0


@pytest.mark.parametrize(
    ("options", "fused"),
    [
        (AnalysisOptions(), True),
        (AnalysisOptions(fuse_classifier=False), False),
        (AnalysisOptions(precision="bf16"), False),  # autocast needs eager linear layers
    ],
)
def test_the_analyser_fuses_only_for_cpu_fp32(
    classifier_file: Path, options: AnalysisOptions, fused: bool
) -> None:
    analyser = ChimpAnalyser(classifier=load_classifier(classifier_file), options=options)
    assert analyser.classifier is not None
    assert fused_count(analyser.classifier.model) == (18 if fused else 0)
