"""A model file is data, never code: a pickle whose ``__reduce__`` would run something is
refused with a clear message, and the something never runs -- through the loaders and through
a worker starting with the file configured."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.errors import ModelFileError
from chimp_worker.models.classifier import load_classifier
from chimp_worker.models.detector import load_detector

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def checkpoint_with(payload: Payload) -> dict[str, object]:
    """The published classifier layout, with the payload tucked into an innocent-looking key."""
    return {
        "model_state_dict": {"head.fc.5.weight": torch.zeros(4, 8)},
        "model_struc_dict": {"type": "convnext_tiny"},
        "class_names": list(CLASS_NAMES),
        "loss_val": payload,
    }


def write_zip(path: Path, marker: Path) -> None:
    torch.save(checkpoint_with(Payload(marker)), path)


def write_legacy(path: Path, marker: Path) -> None:
    torch.save(checkpoint_with(Payload(marker)), path, _use_new_zipfile_serialization=False)


def write_plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(checkpoint_with(Payload(marker))))


def write_state_dict(path: Path, marker: Path) -> None:
    torch.save({"roi_heads.box_predictor.cls_score.weight": Payload(marker)}, path)


WRITERS = {
    "torch zip": write_zip,
    "torch legacy": write_legacy,
    "plain pickle": write_plain_pickle,
    "detector state_dict": write_state_dict,
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("form", sorted(WRITERS))
@pytest.mark.parametrize("loader", ["classifier", "detector"])
def test_a_model_file_carrying_code_is_refused_and_the_code_never_runs(
    form: str, loader: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    WRITERS[form](path, marker)
    assert not marker.exists()
    with pytest.raises(ModelFileError) as error:
        load_classifier(path) if loader == "classifier" else load_detector(path)
    assert not marker.exists(), "code from the model file ran"
    assert str(path) in str(error.value)
    if form.startswith("torch"):
        assert "refusing to unpickle" in str(error.value)


@pytest.mark.slow
def test_a_worker_configured_with_such_a_file_refuses_to_start_and_runs_nothing(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "classifier.pt"
    write_zip(path, marker)
    sqlite3.connect(tmp_path / "db.sqlite").close()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIMP_")}
    env |= {
        "CHIMP_CLASSIFIER_PATH": str(path),
        "CHIMP_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "CHIMP_IMAGE_ROOTS": f'["{tmp_path}"]',
        "CHIMP_TORCH_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "chimp_worker", "run", "--max-messages", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr  # a bad model file: fix the settings
    assert "Traceback" not in result.stderr
    assert "refusing to unpickle" in result.stderr
    assert not marker.exists(), "code from the model file ran"
