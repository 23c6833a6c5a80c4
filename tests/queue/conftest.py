"""Queue tests: settings with unique queue names, and a probe to look inside the queues."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.plates import plate_settings, small_plate
from helpers.rabbit import RabbitProbe
from helpers.workers import PlateWorld

from chimp_worker.config import Settings
from chimp_worker.ispyb.database import make_engine, make_session_factory


@pytest.fixture
def rabbit(amqp_url: str) -> Iterator[RabbitProbe]:
    probe = RabbitProbe(amqp_url)
    yield probe
    probe.close()


@pytest.fixture
def queue_settings(amqp_url: str, queue_prefix: str, rabbit: RabbitProbe) -> Iterator[Settings]:
    """Settings whose queues and exchange are unique to this test; deleted afterwards."""
    settings = Settings(
        amqp_url=amqp_url,
        events_queue=f"{queue_prefix}.events",
        work_queue=f"{queue_prefix}.work",
        results_exchange=f"{queue_prefix}.results",
        results_queue=f"{queue_prefix}.results-ready",
        retry_initial_wait_s=0.05,
        retry_max_wait_s=0.2,
    )
    yield settings
    rabbit.delete(settings)


@pytest.fixture(params=["mariadb", "facility"])
def ispyb_mariadb_url(request: pytest.FixtureRequest) -> str:
    """A fresh MariaDB database with the ISPyB core subset and the worker's tables, and a
    facility's full ISPyB (tests/helpers/facility.py)."""
    if request.param == "facility":
        return request.getfixturevalue("facility_url")
    from chimp_worker.ispyb.schema import create_all

    url = request.getfixturevalue("mariadb_url")
    create_all(url)
    return url


@pytest.fixture
def world(ispyb_mariadb_url: str, tmp_path: Path, queue_settings: Settings) -> Iterator[PlateWorld]:
    """Three wells of a CrystalQuickX plate (6 images), work items of 2 images."""
    plate = small_plate(ispyb_mariadb_url, tmp_path / "images", wells=3)
    settings = plate_settings(
        ispyb_mariadb_url,
        tmp_path / "images",
        amqp_url=queue_settings.amqp_url,
        events_queue=queue_settings.events_queue,
        work_queue=queue_settings.work_queue,
        results_exchange=queue_settings.results_exchange,
        results_queue=queue_settings.results_queue,
        retry_initial_wait_s=0.05,
        retry_max_wait_s=0.2,
        images_per_work_item=2,
        inspection_visibility_retries=2,
        grace_period_s=30.0,
    )
    engine = make_engine(ispyb_mariadb_url)
    yield PlateWorld(settings, plate, make_session_factory(engine))
    engine.dispose()
