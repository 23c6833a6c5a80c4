"""Shared fixtures: real services, never mocks.

Tests that need MariaDB or RabbitMQ *fail* (never skip) when the service is missing, with a
message saying how to start it, so CI cannot go green by silently skipping them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers.facility import FacilityPool

MARIADB_HOST = os.environ.get("CHIMP_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("CHIMP_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("CHIMP_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("CHIMP_TEST_MARIADB_PASSWORD", "")
AMQP_HOST = os.environ.get("CHIMP_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("CHIMP_TEST_AMQP_PORT", "5672"))

START_HINTS = {
    "MariaDB": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    "RabbitMQ": "rabbitmq-server -detached",
}


def require_service(name: str, host: str, port: int) -> None:
    """Fail the test loudly when a service it needs is not listening."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        pytest.fail(
            f"{name} is not reachable at {host}:{port} ({exc}); start it with: {START_HINTS[name]}",
            pytrace=False,
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ispyb.sqlite'}"


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    require_service("MariaDB", MARIADB_HOST, MARIADB_PORT)
    import MySQLdb

    name = f"chimp_test_{uuid.uuid4().hex[:12]}"
    admin = MySQLdb.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, passwd=MARIADB_PASSWORD
    )
    try:
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        password = f":{MARIADB_PASSWORD}" if MARIADB_PASSWORD else ""
        yield (
            f"mysql+mysqldb://{MARIADB_USER}{password}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
            "?charset=utf8mb4"
        )
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run a test once against SQLite and once against a fresh MariaDB database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def dev_ispyb_url(database_url: str) -> str:
    """``database_url`` with the ISPyB core subset and the worker's tables created and seeded."""
    from chimp_worker.ispyb.schema import create_all

    create_all(database_url)
    return database_url


@pytest.fixture(scope="session")
def facility_pool() -> Iterator[FacilityPool]:
    """Facility ISPyB databases (tests/helpers/facility.py), built once, reset per lease."""
    from helpers.facility import FacilityPool

    pool = FacilityPool()
    yield pool
    pool.close()


@pytest.fixture
def facility_url(facility_pool: FacilityPool) -> Iterator[str]:
    """A facility's ISPyB: the full schema with every foreign key, the facility's lookups,
    the worker's tables from ``db upgrade`` and the BASELINE_CV schema the admins added."""
    require_service("MariaDB", MARIADB_HOST, MARIADB_PORT)
    with facility_pool.lease() as url:
        yield url


@pytest.fixture
def bare_facility_url(facility_pool: FacilityPool) -> Iterator[str]:
    """A facility's ISPyB before its administrators added any schema: MARCO and CHIMP only."""
    require_service("MariaDB", MARIADB_HOST, MARIADB_PORT)
    with facility_pool.lease(score_schemas=()) as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("facility", marks=pytest.mark.mariadb),
    ]
)
def ispyb_url(request: pytest.FixtureRequest) -> str:
    """A database the worker writes to, three ways: SQLite and MariaDB with the core subset
    (``create_all``), and a facility's full ISPyB (``facility_url``)."""
    if request.param == "facility":
        return request.getfixturevalue("facility_url")
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "mariadb_url")
    from chimp_worker.ispyb.schema import create_all

    create_all(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("facility", marks=pytest.mark.mariadb)])
def ispyb_world_url(request: pytest.FixtureRequest) -> str:
    """The two worlds a deployment really has: the embedded SQLite default (core subset) and a
    facility's full ISPyB; for the slower end-to-end tests (replay, daemon)."""
    return request.getfixturevalue(
        "facility_url" if request.param == "facility" else "ispyb_sqlite_url"
    )


@pytest.fixture
def ispyb_sqlite_url(sqlite_url: str) -> str:
    """An SQLite file with the full schema and seed rows (for tests that need no MariaDB)."""
    from chimp_worker.ispyb.schema import create_all

    create_all(sqlite_url)
    return sqlite_url


@pytest.fixture
def amqp_url() -> str:
    require_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"


@pytest.fixture
def queue_prefix() -> str:
    """Unique queue/exchange names per test so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}"
