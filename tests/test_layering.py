"""The package's arrows run one way: these imports would bend them back.

Read from the source with ``ast`` (module-level and function-level imports alike), so a lazy
import inside a function cannot slip a wrong-way arrow past the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chimp_worker"

# (modules whose files are checked, imports they must not make, why)
FORBIDDEN = [
    ("handling", ("ispyb",), "the handler decides; the pipeline owns the database"),
    ("models", ("pipeline", "ispyb", "wiring", "bench"), "inference knows nothing of work"),
    ("ispyb", ("report",), "queries feed the report, never the other way"),
    ("geometry", ("models", "ispyb", "pipeline"), "the geometry is pure"),
    ("analysis", ("models", "ispyb", "pipeline", "baseline"), "the contract depends on nothing"),
    ("events", ("ispyb", "pipeline", "models", "broker"), "events are plain data"),
    ("config", ("models", "ispyb", "pipeline", "broker", "wiring"), "settings read no code"),
]
TORCH_FREE = ("geometry", "analysis", "events", "config", "handling", "replay", "ispyb", "hits")


def _files(module: str) -> list[Path]:
    package = PACKAGE / module
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{module}.py"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(("module", "forbidden", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_no_import_runs_against_the_data_flow(
    module: str, forbidden: tuple[str, ...], why: str
) -> None:
    wrong = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _files(module)
        for name in _imports(path)
        for target in forbidden
        if name == f"chimp_worker.{target}" or name.startswith(f"chimp_worker.{target}.")
    )
    assert not wrong, f"{why}: " + "; ".join(wrong)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_stays_in_models_train_and_bench(module: str) -> None:
    wrong = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in _files(module)
        if any(
            name == "torch" or name.startswith(("torch.", "torchvision", "timm"))
            for name in _imports(path)
        )
    )
    assert not wrong, f"torch imported outside models/, train/, bench/: {wrong}"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The walker finds function-level imports too, so the tests above can fail."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from chimp_worker.ispyb import progress\n    import torch\n")
    assert {"chimp_worker.ispyb", "chimp_worker.ispyb.progress", "torch"} <= _imports(source)
