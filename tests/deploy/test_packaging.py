"""The wheel a facility installs: built from the tracked files, installed into a fresh virtual
environment, and run from a directory that is not the source tree.

The fresh environment gets its dependencies (torch included, several GB) from the test
environment through a ``.pth`` line, and the install runs with ``--no-index``: pip must find
every declared dependency already satisfied, so the wheel's metadata is checked too, without
downloading anything. ``chimp_worker`` itself comes only from the wheel (no PYTHONPATH, no
source tree on sys.path).
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers.deploy import REPO

from chimp_worker.ispyb.schema import head_revisions

pytestmark = pytest.mark.slow

OPTIONAL = {"matplotlib", "pycocotools"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points Python at the source tree or settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith("CHIMP_") and key != "ISPYB_CREDENTIALS"
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the tracked files (the work tree stays clean)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = REPO / os.fsdecode(name)
        if path.is_file():
            target = source / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*build, "-w", str(dist), str(source)],
        check=True,
        env=clean_env(),
        timeout=300,
    )
    (built,) = dist.glob("chimp_worker-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--without-pip", root],
        check=True,
        timeout=120,
    )
    purelib = Path(sysconfig.get_paths(vars={"base": str(root)})["purelib"])
    shared = Path(sysconfig.get_paths()["purelib"]).resolve()
    (purelib / "zz-test-dependencies.pth").write_text(f"{shared}\n")
    subprocess.run(
        [root / "bin" / "python", "-m", "pip", "install", "--no-index", "-q", wheel],
        check=True,
        env=clean_env(),
        timeout=300,
    )
    return root / "bin"


def test_wheel_ships_both_migration_histories_and_the_example_settings(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for history in ("core", "worker"):
        assert f"chimp_worker/migrations/{history}/env.py" in names
        assert f"chimp_worker/migrations/{history}/script.py.mako" in names
    assert "chimp_worker/migrations/worker/versions/worker_0001_worker_initial.py" in names
    assert "chimp_worker/migrations/core/versions/core_0001_core_initial.py" in names
    assert "chimp_worker/examples/chimp-worker.toml" in names
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]


def test_evaluation_only_dependencies_are_extras_not_requirements(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    requirements = metadata.get_all("Requires-Dist")
    plain = {
        r.split(";")[0].split(">")[0].split("<")[0].strip() for r in requirements if ";" not in r
    }
    assert {"torch", "torchvision", "pika", "sqlalchemy", "alembic", "pyyaml"} <= plain
    assert not OPTIONAL & plain
    assert {"evaluate", "train", "test"} <= set(metadata.get_all("Provides-Extra"))
    # The package page pip users read names the CPU-only torch index.
    assert "download.pytorch.org/whl/cpu" in metadata.get_payload()


def test_installed_wheel_migrates_and_runs_the_demo_from_another_directory(
    venv: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.run(
        [venv / "python", "-c", "import chimp_worker; print(chimp_worker.__file__)"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert located.stdout.startswith(str(venv.parent))

    database = elsewhere / "ispyb.sqlite"
    env = clean_env(CHIMP_DATABASE_URL=f"sqlite:///{database}")
    upgrade = subprocess.run(
        [venv / "chimp-worker", "db", "upgrade"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "core    empty -> core_0001" in upgrade.stdout
    assert f"worker  empty -> {head_revisions()['worker']}" in upgrade.stdout
    current = subprocess.run(
        [venv / "chimp-worker", "db", "current"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert current.returncode == 0, current.stderr
    assert current.stdout.count("up to date") == 2

    demo = subprocess.run(
        [venv / "chimp-worker", "demo", "--wells", "1", "--no-report", "--out", "demo"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr
    assert "2 images analysed by baseline" in demo.stdout
    assert (elsewhere / "demo" / "chimp-demo.sqlite").is_file()


def test_installed_wheel_says_which_extra_an_evaluation_command_needs(
    venv: Path, tmp_path: Path
) -> None:
    """With the optional packages hidden, `evaluate` fails in one line naming the extra."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in OPTIONAL:
        (blocker / f"{name}.py").write_text(
            f"raise ModuleNotFoundError('no {name}', name='{name}')\n"
        )
    result = subprocess.run(
        [venv / "chimp-worker", "evaluate", "detector", "--annotations", str(tmp_path / "x.json")],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(blocker)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'chimp-worker[evaluate]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
