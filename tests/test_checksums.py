"""The model checksum is defined once, torch-free, and the models use that definition."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from chimp_worker.checksums import file_sha256


def test_file_sha256_is_the_sha256_of_the_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one 1 MiB read
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_the_models_hash_with_the_same_function() -> None:
    from chimp_worker.models import checkpoints

    assert checkpoints.file_sha256 is file_sha256


def test_replay_hashes_model_files_without_importing_torch() -> None:
    code = (
        "import sys, chimp_worker.replay, chimp_worker.checksums, chimp_worker.plate_layout;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
