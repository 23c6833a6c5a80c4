"""A database that refuses connections (a MariaDB restart or fail-over) mid-plate must not
spend the messages' delivery limit: each worker holds the message in hand, unacked, with its
consumers paused, until the database answers again -- up to ``database_outage_hold_s``; past
that the message goes back to its queue once and waits there, taken by no paused worker.

An attack found a refusal of 26 s or more sending work items to ``dlq.chimp.work`` by
delivery limit: each delivery failed fast, was requeued and spent one of the five. Refusals
are made by the TCP proxy in front of the shared MariaDB, which itself is never stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers.faults import MARIADB_HOST, MARIADB_PORT, FaultWorld, WorkerPool
from helpers.tcp_proxy import TcpProxy
from sqlalchemy.engine import make_url

from chimp_worker.analysis import Analyser

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


@contextmanager
def worker_behind_a_proxy(
    world: FaultWorld, workers: WorkerPool, **settings: Any
) -> Iterator[tuple[TcpProxy, Any]]:
    """One worker whose database connections go through a proxy the test can refuse."""
    with TcpProxy(MARIADB_HOST, MARIADB_PORT) as proxy:
        via_proxy = make_url(world.database_url).set(host="127.0.0.1", port=proxy.port)
        timeouts = json.dumps({"connect_timeout": 3, "read_timeout": 5, "write_timeout": 5})
        worker = workers.start(
            world.worker_env(
                database_url=via_proxy.render_as_string(hide_password=False),
                database_connect_args=timeouts,
                **settings,
            ),
            name="w1",
            hooks=world.hooks(analyse_pause_s=1),
        )
        yield proxy, worker


def refuse_mid_plate(world: FaultWorld, proxy: TcpProxy, worker: Any) -> float:
    """Refuse every database connection while the first work item is being analysed."""
    world.hook_events.wait_for("analysing", worker=worker)
    proxy.refuse()
    return time.monotonic()


def test_the_database_refusing_connections_for_60_s_mid_plate_dead_letters_nothing(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    with worker_behind_a_proxy(world, workers) as (proxy, worker):
        world.publish_inspection()
        refused_at = refuse_mid_plate(world, proxy, worker)
        worker.wait_for_log("message_held_for_database", timeout_s=30)
        worker.wait_for_log("consumers_paused", timeout_s=10)
        time.sleep(max(0.0, 60 - (time.monotonic() - refused_at)))
        assert world.settled_images() < len(world.image_ids), "the outage came mid-plate"
        assert world.probe.count(world.work_queue) >= 1, "no other work item was taken"
        proxy.restore()
        world.wait_until_complete(90)
        assert worker.alive
        assert worker.stop() == 0
    world.check(analyser)  # every image once, one results-ready, nothing dead-lettered
    assert worker.events("message_requeued") == []
    done = worker.events("message_done")
    assert {r["outcome"] for r in done} == {"acked"}
    assert [r for r in done if r["redelivered"]] == [], "not a single delivery spent"
    assert worker.events("consumers_resumed")
    assert worker.events("database_back")


def test_an_outage_longer_than_the_hold_returns_the_message_once_and_it_waits_for_the_database(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    """The documented outcome past ``database_outage_hold_s``: requeued once (one delivery
    spent), then left in the queue while the worker stays paused; so even a delivery limit of
    1 (two deliveries) survives an outage four times the bound."""
    world.delivery_limit = 1
    hold_s = 8
    with worker_behind_a_proxy(world, workers, database_outage_hold_s=hold_s) as (proxy, worker):
        world.publish_inspection()
        refused_at = refuse_mid_plate(world, proxy, worker)
        returned = worker.wait_for_log("message_requeued", timeout_s=hold_s + 30)
        assert returned["reason"] == "database_unavailable"
        assert "database_outage_hold_s" in returned["detail"]
        time.sleep(max(0.0, 4 * hold_s - (time.monotonic() - refused_at)))
        assert world.probe.count(world.work_queue) >= 2, "the returned item waits in its queue"
        assert len(worker.events("message_requeued")) == 1, "paused: nothing taken meanwhile"
        proxy.restore()
        world.wait_until_complete(90)
        assert worker.stop() == 0
    world.check(analyser)  # nothing dead-lettered
    redelivered = [r for r in worker.events("message_done") if r["redelivered"]]
    assert len(redelivered) == 1
    assert redelivered[0]["delivery_count"] == 1
