"""Fault tests: one MariaDB database for the package (the schema takes seconds to create), a
fresh plate and fresh queues per test, and every worker process killed at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import FaultWorld, WorkerPool, mariadb_admin, mariadb_url_for, require_mariadb

from chimp_worker.analysis import Analyser, AnalysisOptions


@pytest.fixture(scope="package")
def faults_database() -> Iterator[str]:
    """Name of a MariaDB database with the ISPyB subset and worker tables, dropped at the end."""
    require_mariadb()
    from chimp_worker.ispyb.schema import create_all

    name = f"chimp_faults_{uuid.uuid4().hex[:10]}"
    admin = mariadb_admin()
    try:
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        create_all(mariadb_url_for(name))
        yield name
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = WorkerPool()
    yield pool
    pool.clean_up()


@pytest.fixture
def world(
    faults_database: str, amqp_url: str, queue_prefix: str, tmp_path: Path, workers: WorkerPool
) -> Iterator[FaultWorld]:
    """Two wells (four images) of a fresh plate; its queues are deleted afterwards."""
    world = FaultWorld.create(
        mariadb_url_for(faults_database), tmp_path / "images", amqp_url, queue_prefix, wells=2
    )
    world.pool = workers
    yield world
    world.close()


@pytest.fixture(scope="package")
def analyser() -> Analyser:
    """The analyser the workers run, in the test process, to recompute the expected results."""
    from chimp_worker.baseline import BaselineAnalyser
    from chimp_worker.config import Settings

    return BaselineAnalyser(AnalysisOptions.from_settings(Settings(analyser="baseline")))
