"""Folding the detector's frozen batch norm into its convolutions keeps what it computes."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from chimp_worker.models.detector import build_detector
from chimp_worker.models.fusion import fold_frozen_batchnorm


def randomised_detector() -> torch.nn.Module:
    """A detector whose frozen batch norms are far from identity, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(3)
    model = build_detector(3)
    for module in model.backbone.body.modules():
        if isinstance(module, FrozenBatchNorm2d):
            size = module.weight.shape
            module.weight.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
    return model


def test_the_folded_backbone_gives_the_same_features_to_rounding() -> None:
    model = randomised_detector()
    image = torch.rand(1, 3, 224, 288, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.backbone(image)
        fold_frozen_batchnorm(model)
        got = model.backbone(image)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert set(got) == set(expected)
    for name, feature in expected.items():
        scale = feature.abs().max()
        assert scale > 0
        torch.testing.assert_close(got[name], feature, rtol=0, atol=float(scale) * 1e-4)


def test_folding_twice_changes_nothing() -> None:
    model = fold_frozen_batchnorm(randomised_detector())
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fold_frozen_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_only_a_frozen_batch_norm_after_a_convolution_is_folded() -> None:
    from chimp_worker.models.fusion import _fold

    with pytest.raises(TypeError, match="Conv2d then FrozenBatchNorm2d"):
        _fold(torch.nn.Linear(2, 2), FrozenBatchNorm2d(2))
