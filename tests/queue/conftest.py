"""Queue tests: settings with unique queue names, and a probe to look inside the queues."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.rabbit import RabbitProbe

from chimp_worker.config import Settings


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


@pytest.fixture
def ispyb_mariadb_url(mariadb_url: str) -> str:
    """A fresh MariaDB database with the ISPyB core subset and the worker's tables."""
    from chimp_worker.ispyb.schema import create_all

    create_all(mariadb_url)
    return mariadb_url
