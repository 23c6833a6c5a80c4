"""Security tests: worker processes cleaned up, queue names of one's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import WorkerPool
from helpers.rabbit import RabbitProbe

from chimp_worker.config import Settings


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = WorkerPool()
    yield pool
    pool.clean_up()


@pytest.fixture
def queue_env(amqp_url: str, queue_prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """CHIMP_* queue names unique to this test (deleted afterwards), an empty image root."""
    (tmp_path / "no-images").mkdir()
    env = {
        "CHIMP_IMAGE_ROOTS": json.dumps([str(tmp_path / "no-images")]),
        "CHIMP_AMQP_URL": amqp_url,
        "CHIMP_EVENTS_QUEUE": f"{queue_prefix}.events",
        "CHIMP_WORK_QUEUE": f"{queue_prefix}.work",
        "CHIMP_RESULTS_EXCHANGE": f"{queue_prefix}.results",
        "CHIMP_RESULTS_QUEUE": f"{queue_prefix}.results-ready",
        "CHIMP_ANALYSER": "baseline",
        "CHIMP_BASELINE_WRITES_TARGETS": "true",
        "CHIMP_RETRY_INITIAL_WAIT_S": "0.1",
        "CHIMP_RETRY_MAX_WAIT_S": "0.5",
    }
    yield env
    probe = RabbitProbe(amqp_url)
    try:
        probe.delete(
            Settings(
                amqp_url=amqp_url,
                events_queue=env["CHIMP_EVENTS_QUEUE"],
                work_queue=env["CHIMP_WORK_QUEUE"],
                results_exchange=env["CHIMP_RESULTS_EXCHANGE"],
                results_queue=env["CHIMP_RESULTS_QUEUE"],
            )
        )
    finally:
        probe.close()
