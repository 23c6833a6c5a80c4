"""Fixtures for the staff views: a seeded plate with known results on SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from helpers.rabbit import RabbitProbe
from helpers.staff import KnownPlate, build_known_plate, scratch_mariadb

from chimp_worker.config import Settings


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Commands configure structlog onto the test's captured stderr; undo that afterwards."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def own_known_plate(ispyb_url: str, tmp_path: Path) -> Iterator[KnownPlate]:
    """The KNOWN plate on SQLite and on MariaDB, for one test that changes it."""
    yield from build_known_plate(ispyb_url, tmp_path / "images")


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("facility", marks=pytest.mark.mariadb),
    ],
)
def shared_known_plate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KnownPlate]:
    """The KNOWN plate once per module and backend (SQLite, MariaDB with the core subset, a
    facility's full ISPyB), for tests that only read it."""
    from chimp_worker.ispyb.schema import create_all

    directory = tmp_path_factory.mktemp("known-plate")
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'ispyb.sqlite'}"
        create_all(url)
        yield from build_known_plate(url, directory / "images")
        return
    if request.param == "facility":
        with request.getfixturevalue("facility_pool").lease() as url:
            yield from build_known_plate(url, directory / "images")
        return
    with scratch_mariadb() as url:
        create_all(url)
        yield from build_known_plate(url, directory / "images")


@pytest.fixture
def known_plate(shared_known_plate: KnownPlate) -> KnownPlate:
    """Read-only tests share one KNOWN plate per module and backend."""
    return shared_known_plate


@pytest.fixture
def known_plate_sqlite(ispyb_sqlite_url: str, tmp_path: Path) -> Iterator[KnownPlate]:
    yield from build_known_plate(ispyb_sqlite_url, tmp_path / "images")


@pytest.fixture
def rabbit(amqp_url: str) -> Iterator[RabbitProbe]:
    probe = RabbitProbe(amqp_url)
    yield probe
    probe.close()


@pytest.fixture
def queue_names(amqp_url: str, queue_prefix: str, rabbit: RabbitProbe) -> Iterator[dict[str, str]]:
    """Settings overrides naming queues unique to this test; the queues are deleted after."""
    names = {
        "amqp_url": amqp_url,
        "events_queue": f"{queue_prefix}.events",
        "work_queue": f"{queue_prefix}.work",
        "results_exchange": f"{queue_prefix}.results",
        "results_queue": f"{queue_prefix}.results-ready",
        "retry_initial_wait_s": 0.05,
        "retry_max_wait_s": 0.2,
    }
    yield names
    rabbit.delete(Settings(**names))
