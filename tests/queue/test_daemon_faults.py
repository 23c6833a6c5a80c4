"""The daemon under the faults issue 5 names: long inference, a broker-closed connection,
SIGTERM mid-message, a locked database; plus its liveness and systemd signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import pytest
import structlog
from helpers.analysers import PixelStatsAnalyser
from helpers.rabbit import RabbitProbe, close_broker_connection
from helpers.workers import (
    PlateWorld,
    image_states,
    inspection_state,
    running_workers,
    score_rows_per_image,
    wait_until,
    worker_process,
)
from sqlalchemy.engine import make_url

from chimp_worker import __version__
from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.daemon import Daemon
from chimp_worker.events import InspectionCompleted, WorkItem
from chimp_worker.sdnotify import SystemdNotifier
from chimp_worker.wiring import make_pipeline

pytestmark = [pytest.mark.rabbitmq, pytest.mark.mariadb, pytest.mark.slow]


def publish(world: PlateWorld, event: InspectionCompleted | WorkItem) -> None:
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        publisher.publish(event)


def all_done(world: PlateWorld) -> dict[int, tuple[str, None]]:
    return {image_id: ("done", None) for image_id in world.image_ids}


def test_inference_three_times_the_heartbeat_keeps_the_connection_and_acks(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    settings = world.settings.model_copy(update={"amqp_heartbeat_s": 2})
    analyser = PixelStatsAnalyser(seconds_per_image=6.5)  # > 3 x 2 s heartbeat
    first = world.image_ids[0]
    publish(world, WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=(first,)))
    with running_workers() as start:
        worker = start(settings, analyser, name="slow", idle_exit_s=1.0)
        worker.join(60)
    metrics = worker.metrics
    assert metrics.value("chimp_messages_total", queue="work", outcome="acked") == 1
    assert metrics.value("chimp_broker_reconnects_total") == 0
    assert metrics.value("chimp_messages_total", queue="work", outcome="stale") == 0
    assert metrics.value("chimp_message_seconds_sum", queue="work") > 6.5
    assert sum(analyser.calls.values()) == 1  # never redelivered
    assert image_states(world.factory, world.inspection_id) == {first: ("done", None)}
    assert rabbit.count(settings.work_queue) == 0


def test_a_connection_closed_by_the_broker_mid_message_recovers_without_loss_or_duplicates(
    world: PlateWorld, rabbit: RabbitProbe, queue_prefix: str
) -> None:
    analyser = PixelStatsAnalyser(seconds_per_image=1.0)
    settings = world.settings.model_copy(update={"images_per_work_item": 6})  # one 6 s item
    name = f"{queue_prefix}-victim"
    publish(world, InspectionCompleted(containerInspectionId=world.inspection_id))
    with running_workers() as start:
        worker = start(settings, analyser, name=name, idle_exit_s=2.0)
        wait_until(lambda: sum(analyser.calls.values()) >= 1, 30, "the first image analysed")
        assert close_broker_connection(name) == 1  # mid work item: 1 of its 6 images done
        worker.join(90)
    metrics = worker.metrics
    assert metrics.value("chimp_broker_reconnects_total") >= 1
    assert metrics.value("chimp_messages_total", queue="work", outcome="stale") >= 1
    assert image_states(world.factory, world.inspection_id) == all_done(world)
    assert score_rows_per_image(world.factory, world.image_ids) == dict.fromkeys(world.image_ids, 4)
    assert set(analyser.calls.values()) == {1}  # the redelivered item found its images done
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert len(rabbit.take_all(world.settings.results_queue)) == 1
    assert rabbit.count(world.settings.work_queue) == 0
    assert rabbit.count(f"dlq.{world.settings.work_queue}") == 0


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_in_main_thread_and_sigterm(
    world: PlateWorld, analyser: PixelStatsAnalyser, grace_s: float
) -> tuple[Daemon, int, float]:
    """Run a daemon in this (main) thread; SIGTERM it once its first image is analysed."""
    settings = world.settings.model_copy(update={"grace_period_s": grace_s})
    pipeline = make_pipeline(settings, analyser=analyser)
    daemon = Daemon(settings, pipeline, connection_name="sigterm-test")
    daemon.install_signal_handlers()
    sent_at: list[float] = []

    def terminate_when_busy() -> None:
        wait_until(lambda: sum(analyser.calls.values()) >= 1, 30, "the first image")
        sent_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_busy, daemon=True)
    killer.start()
    try:
        code = daemon.run()
    finally:
        pipeline.close()
    killer.join(5)
    return daemon, code, time.monotonic() - sent_at[0]


@pytest.mark.usefixtures("restore_signal_handlers")
def test_sigterm_mid_message_finishes_it_within_the_grace_and_exits_zero(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    three = world.image_ids[:3]
    publish(world, WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=three))
    publish(world, WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=(6,)))
    analyser = PixelStatsAnalyser(seconds_per_image=0.7)
    daemon, code, seconds = run_in_main_thread_and_sigterm(world, analyser, grace_s=20)
    assert code == 0
    assert seconds < 10
    assert daemon.metrics.value("chimp_messages_total", queue="work", outcome="acked") == 1
    assert image_states(world.factory, world.inspection_id) == {i: ("done", None) for i in three}
    [waiting] = rabbit.take_all(world.settings.work_queue)  # never started: returned to the queue
    assert waiting.json["blSampleImageIds"] == [6]


@pytest.mark.usefixtures("restore_signal_handlers")
def test_sigterm_past_the_grace_requeues_the_message_and_another_worker_finishes_it(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    publish(
        world, WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=world.image_ids)
    )
    analyser = PixelStatsAnalyser(seconds_per_image=1.0)
    daemon, code, seconds = run_in_main_thread_and_sigterm(world, analyser, grace_s=0.5)
    assert code == 0
    assert seconds < 5
    assert daemon.metrics.value("chimp_messages_total", queue="work", outcome="requeued") == 1
    wait_until(lambda: rabbit.count(world.settings.work_queue) == 1, 10, "the requeued item")
    time.sleep(1.5)  # let the abandoned thread reach its image boundary and stop
    finished_before = sum(1 for s, _ in image_states(world.factory, world.inspection_id).values())
    assert finished_before < len(world.image_ids)
    with running_workers() as start:
        start(world.settings, PixelStatsAnalyser(), name="second", idle_exit_s=1.0).join()
    assert image_states(world.factory, world.inspection_id) == all_done(world)
    assert inspection_state(world.factory, world.inspection_id) == "done"
    assert len(rabbit.take_all(world.settings.results_queue)) == 1


def test_chimp_worker_run_exits_zero_on_sigterm_and_the_plate_still_completes_once(
    world: PlateWorld, rabbit: RabbitProbe, tmp_path: Path
) -> None:
    """The real command line, the way systemd runs it: SIGTERM once it is working."""
    settings = world.settings
    env = {
        f"CHIMP_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in settings.model_dump(mode="json").items()
        if value is not None
    }
    env["CHIMP_IMAGES_PER_WORK_ITEM"] = "6"  # one work item: SIGTERM lands mid-message
    publish(world, InspectionCompleted(containerInspectionId=world.inspection_id))
    process = worker_process(env)
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if '"image_done"' in line:
                process.send_signal(signal.SIGTERM)
                break
        remaining, _ = process.communicate(timeout=60)
        output.append(remaining)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(output)
    assert process.returncode == 0, text[-3000:]
    assert '"worker_stopped"' in text
    stopping = next(json.loads(line) for line in text.splitlines() if '"worker_stopping"' in line)
    assert stopping["messages_in_hand"] == 1
    with running_workers() as start:
        start(settings, None, name="after", idle_exit_s=1.5).join()
    assert image_states(world.factory, world.inspection_id) == all_done(world)
    assert len(rabbit.take_all(settings.results_queue)) == 1


def test_a_lock_wait_timeout_is_retried_then_requeued_and_succeeds_once_the_lock_goes(
    world: PlateWorld, rabbit: RabbitProbe
) -> None:
    """Another transaction holds the image row: MariaDB error 1205 until it lets go."""
    settings = world.settings.model_copy(
        update={
            "database_connect_args": {"init_command": "SET innodb_lock_wait_timeout=1"},
            "database_retry_attempts": 2,
        }
    )
    first = world.image_ids[0]
    url = make_url(settings.database_url)
    blocker = MySQLdb.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        passwd=url.password or "",
        db=url.database,
    )
    cursor = blocker.cursor()
    cursor.execute("BEGIN")
    cursor.execute("SELECT * FROM BLSampleImage WHERE blSampleImageId = %s FOR UPDATE", (first,))
    publish(world, WorkItem(containerInspectionId=world.inspection_id, blSampleImageIds=(first,)))
    with structlog.testing.capture_logs() as logs, running_workers() as start:
        worker = start(settings, PixelStatsAnalyser(), name="locked", idle_exit_s=1.0)
        metrics = worker.metrics
        wait_until(
            lambda: metrics.value("chimp_messages_total", queue="work", outcome="requeued") >= 1,
            30,
            "the unit requeued after its retries",
        )
        blocker.rollback()
        blocker.close()
        worker.join(60)
    assert metrics.value("chimp_database_retries_total") >= 1
    assert metrics.value("chimp_messages_total", queue="work", outcome="acked") == 1
    assert image_states(world.factory, world.inspection_id) == {first: ("done", None)}
    retried = [entry for entry in logs if entry["event"] == "unit_retrying"]
    assert retried[0]["reason"] == "database_unavailable"
    assert "1205" in retried[0]["detail"]
    assert rabbit.count(f"dlq.{settings.work_queue}") == 0


def test_the_daemon_reports_ready_pings_the_watchdog_and_serves_healthz(
    world: PlateWorld, tmp_path: Path
) -> None:
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    liveness_file = tmp_path / "alive"
    settings = world.settings.model_copy(
        update={"metrics_port": port, "liveness_file": liveness_file}
    )
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"})
    with running_workers() as start:
        worker = start(settings, PixelStatsAnalyser(), name="observed", notifier=notifier)
        messages = [listener.recv(200).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1")
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        assert liveness_file.exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            exposition = reply.read().decode()
        assert "chimp_io_loop_last_beat_seconds" in exposition
        assert "process_resident_memory_bytes" in exposition
        assert (
            'chimp_analyser_info{analyser="pixel-stats-test",schema="BASELINE_CV",'
            f'version="{__version__}"}} 1.0'
        ) in exposition
        model = PixelStatsAnalyser.models[0]
        assert (
            f'chimp_model_info{{name="{model.name}",role="{model.role}",sha256="{model.sha256}"}}'
            " 1.0"
        ) in exposition
        head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as reply:
            assert (reply.status, reply.read()) == (200, b"")
        worker.stop()
    rest = []
    listener.settimeout(0.5)
    try:
        while True:
            rest.append(listener.recv(200).decode())
    except TimeoutError:
        pass
    listener.close()
    assert any(message.startswith("STOPPING=1") for message in rest)
    assert not liveness_file.exists()
