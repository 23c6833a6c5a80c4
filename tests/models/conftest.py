"""Weight files shared by the model tests: built once, cached across sessions (see helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.weights import cached_weight_file


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """The test machine's cores are shared: one intra-op thread for model tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def weights_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache directory (kept between runs), or a session temp dir without it."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("weights")
    return Path(cache.mkdir("chimp-model-weights"))


@pytest.fixture(scope="session")
def classifier_file(weights_dir: Path) -> Path:
    return cached_weight_file(weights_dir, "classifier", seed=0)


@pytest.fixture(scope="session")
def vmxi_detector_file(weights_dir: Path) -> Path:
    return cached_weight_file(weights_dir, "detector", flavour="vmxi", seed=0)


@pytest.fixture(scope="session")
def xchem_detector_file(weights_dir: Path) -> Path:
    return cached_weight_file(weights_dir, "detector", flavour="xchem", seed=0)
