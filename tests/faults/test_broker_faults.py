"""RabbitMQ failing under a running worker: the connection cut or blackholed by a TCP proxy,
and the broker application stopped and started mid-plate. The worker reconnects by itself,
acks for the dead connection are dropped, the redelivered work is skipped where it was
already committed, and the plate completes exactly once."""

from __future__ import annotations

import subprocess
import time

import pytest
from helpers.faults import FaultWorld, WorkerPool, wait_until
from helpers.rabbit import RabbitProbe
from helpers.tcp_proxy import TcpProxy

from chimp_worker.analysis import Analyser

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]

AMQP_PORT = 5672
SESSION_LOST = "broker_unavailable"  # the daemon's log line when its connection is gone


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_a_connection_cut_mid_plate_is_reconnected_and_nothing_is_lost_or_doubled(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    with TcpProxy("127.0.0.1", AMQP_PORT) as proxy:
        worker = workers.start(
            world.worker_env(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"),
            name="w1",
            hooks=world.hooks(analyse_pause_s=1),
        )
        world.publish_inspection()
        world.hook_events.wait_for("analysing", worker=worker)
        proxy.cut()
        assert proxy.connections_cut == 1
        worker.wait_for_log("broker_session_open", count=2)
        world.wait_until_complete()
        assert worker.alive
        assert worker.stop() == 0
    world.check(analyser)
    assert worker.events(SESSION_LOST)
    assert worker.events("stale_ack_dropped"), "the ack for the cut connection was dropped"


def test_a_blackholed_connection_is_noticed_by_heartbeats_and_replaced(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    with TcpProxy("127.0.0.1", AMQP_PORT) as proxy:
        worker = workers.start(
            world.worker_env(
                amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F", amqp_heartbeat_s=2
            ),
            name="w1",
            hooks=world.hooks(analyse_pause_s=1),
        )
        world.publish_inspection()
        world.hook_events.wait_for("analysing", worker=worker)
        proxy.blackhole()
        started = time.monotonic()
        worker.wait_for_log(SESSION_LOST, timeout_s=30)
        noticed_after = time.monotonic() - started
        proxy.restore()
        worker.wait_for_log("broker_session_open", count=2, timeout_s=60)
        world.wait_until_complete()
        assert worker.alive
        assert worker.stop() == 0
    world.check(analyser)
    assert noticed_after < 20, f"a silent broker took {noticed_after:.0f}s to notice"


def test_the_broker_stopped_and_started_mid_plate_is_survived(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    """``rabbitmqctl stop_app`` disconnects every client on this machine: kept short."""
    worker = workers.start(world.worker_env(), name="w1", hooks=world.hooks(analyse_pause_s=1))
    world.publish_inspection()
    world.hook_events.wait_for("analysing", worker=worker)
    world.probe.close()
    try:
        rabbitmqctl("stop_app")
        worker.wait_for_log(SESSION_LOST, timeout_s=30)
        time.sleep(1)
    finally:
        rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    world.probe = RabbitProbe(world.amqp_url)
    worker.wait_for_log("broker_session_open", count=2, timeout_s=60)
    world.wait_until_complete()
    wait_until(lambda: world.probe.count(world.work_queue) == 0, 30, "the work queue to drain")
    assert worker.alive
    assert worker.stop() == 0
    world.check(analyser)
