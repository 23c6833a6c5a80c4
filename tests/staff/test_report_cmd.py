"""``chimp-worker report`` fails loudly when it cannot read the pictures it was asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.staff import KnownPlate

from chimp_worker.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_without_image_roots_the_report_stops_and_names_the_fix(
    capsys, known_plate_sqlite: KnownPlate, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("CHIMP_IMAGE_ROOTS", raising=False)
    out = tmp_path / "plate.html"
    argv = ["--database-url", known_plate_sqlite.url, "report", "--barcode", "STAFF-001"]
    code, _, err = run(capsys, *argv, "--out", str(out))
    assert code == 2
    assert "drop pictures cannot be read: invalid setting image_roots" in err
    assert "or pass --no-pictures" in err
    assert not out.exists()
    code, stdout, _ = run(capsys, *argv, "--out", str(out), "--no-pictures")
    assert code == 0
    assert f"report: {out}" in stdout
    assert "data:image/jpeg" not in out.read_text()


def test_unreadable_pictures_give_a_report_without_them_and_a_failing_exit(
    capsys, known_plate_sqlite: KnownPlate, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CHIMP_IMAGE_ROOTS", f'["{known_plate_sqlite.image_root}"]')
    missing = known_plate_sqlite.plate.image_paths[known_plate_sqlite.plate.image_ids[(1, 2)]]
    missing.unlink()
    out = tmp_path / "plate.html"
    argv = ["--database-url", known_plate_sqlite.url, "report", "--barcode", "STAFF-001"]
    code, stdout, err = run(capsys, *argv, "--out", str(out))
    assert code == 1
    assert "note: 1 image(s) could not be read and are not shown, e.g. " in stdout
    assert f"{missing} (image_missing)" in stdout
    assert err.splitlines()[-1].startswith(
        "chimp-worker: pictures_unreadable: 1 drop picture(s) could not be read"
    )
    assert "--no-pictures" in err
    assert out.read_text().count("data:image/jpeg") == 7  # every other picture is there
