"""Fixtures for the staff views: a seeded plate with known results on SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.staff import KnownPlate, build_known_plate


@pytest.fixture
def known_plate(ispyb_url: str, tmp_path: Path) -> Iterator[KnownPlate]:
    """The KNOWN plate on SQLite and on MariaDB."""
    yield from build_known_plate(ispyb_url, tmp_path / "images")


@pytest.fixture
def known_plate_sqlite(ispyb_sqlite_url: str, tmp_path: Path) -> Iterator[KnownPlate]:
    yield from build_known_plate(ispyb_sqlite_url, tmp_path / "images")
