"""Nothing wedges a worker: an image whose read or analysis never returns is abandoned at its
deadline as that image's failure; work that stops moving where no deadline reaches turns
liveness unhealthy; SIGTERM ends the process within the grace period plus a few seconds and
returns unfinished messages to the queue.

An attack found a FIFO (or a hung NFS read) at one image's path wedging the worker in
``open()`` with ``/healthz`` still ok, an unrelated plate waiting behind it, and a SIGTERM
that requeued the message but never ended the process. The hangs here are made by the hook
wrapper (``tests/helpers/hooked_worker.py``): a fetch or an analyser call that blocks for
ever.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.faults import FaultWorld, WorkerPool, wait_until

from chimp_worker.analysis import Analyser

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def test_a_fetch_that_never_returns_is_that_images_failure_and_the_plate_completes(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    stuck = world.plate.latest.images[1]
    worker = workers.start(
        world.worker_env(image_deadline_s=3),
        name="w1",
        hooks=world.hooks(fetch_hang_on=stuck.imageFullPath),
    )
    world.publish_inspection()
    world.hook_events.wait_for("fetch_hanging", worker=worker)
    world.wait_until_complete(60)
    assert worker.alive
    assert worker.stop(20) == 0, "the abandoned read does not keep the process alive"
    world.check(analyser, expected_failures={stuck.blSampleImageId: "image_timeout"})
    failed = [r for r in worker.events("image_failed") if "detail" in r]
    assert [r["blsample_image_id"] for r in failed] == [stuck.blSampleImageId]
    assert "image_deadline_s" in failed[0]["detail"]


def test_an_analysis_that_never_returns_fails_only_its_image_and_the_plate_completes(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    stuck = world.plate.latest.images[2]
    worker = workers.start(
        world.worker_env(image_deadline_s=2),
        name="w1",
        hooks=world.hooks(analyse_hang_on=stuck.imageFullPath),
    )
    world.publish_inspection()
    world.hook_events.wait_for("analysis_hanging", worker=worker)
    world.wait_until_complete(60)
    assert worker.stop(20) == 0
    # its batch-mate, retried alone, is analysed; the stuck image is the only failure
    world.check(analyser, expected_failures={stuck.blSampleImageId: "analysis_timeout"})
    assert worker.events("batch_analysis_timed_out_retrying_singly")


def test_work_that_stops_moving_turns_liveness_unhealthy_and_sigterm_still_ends_the_process(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser, tmp_path: Path
) -> None:
    """A step no deadline covers (here: a pause after a commit that never ends) stalls the
    work item while the I/O loop turns on: liveness must say so, by every channel."""
    port = free_port()
    alive_file = tmp_path / "alive"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    env = world.worker_env(
        work_stall_timeout_s=3,
        metrics_port=port,
        liveness_file=alive_file,
        grace_period_s=2,
    )
    env |= {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    worker = workers.start(
        env, name="w1", hooks=world.hooks(after_write_pause_s=100_000, after_write_limit=1)
    )
    try:
        worker.wait_for_log("broker_session_open")
        wait_until(lambda: healthz(port)[0] == 200, 10, "/healthz ok while the worker is idle")
        assert "WATCHDOG=1" in datagrams(notify, 1.5), "the watchdog is pinged while healthy"
        world.publish_inspection()
        world.hook_events.wait_for("written", worker=worker)
        wait_until(lambda: healthz(port)[0] == 503, 20, "/healthz to report the stalled work")
        status, text = healthz(port)
        assert status == 503
        assert "stopped moving" in text
        assert "work message" in text
        stalled = worker.wait_for_log("work_stalled", timeout_s=5)
        assert stalled["level"] == "error"
        datagrams(notify, 0.5)  # drop pings sent before the verdict
        touched = alive_file.stat().st_mtime
        assert "WATCHDOG=1" not in datagrams(notify, 2.5), "no watchdog ping while stalled"
        assert alive_file.stat().st_mtime == touched, "the liveness file is no longer touched"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"chimp_work_stalled 1.0" in metrics

        sent = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(2 + 15) == 0
        assert time.monotonic() - sent < 2 + 10
    finally:
        notify.close()
    assert worker.events("grace_expired_requeueing")
    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete(60)
    assert restarted.stop() == 0
    world.check(analyser)


def datagrams(sock: socket.socket, seconds: float) -> list[str]:
    """Every notify datagram that arrives within ``seconds``."""
    received = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            received.append(sock.recv(200).decode())
        except TimeoutError:
            continue
    return received


def test_sigterm_ends_a_worker_whose_read_never_returns_and_the_message_goes_back(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    stuck = world.plate.latest.images[0]
    worker = workers.start(
        world.worker_env(image_deadline_s=600, grace_period_s=2),
        name="w1",
        hooks=world.hooks(fetch_hang_on=stuck.imageFullPath),
    )
    world.publish_inspection()
    world.hook_events.wait_for("fetch_hanging", worker=worker)
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    try:
        code = worker.wait(2 + 15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {time.monotonic() - sent:.0f} s after SIGTERM")
    assert code == 0
    assert time.monotonic() - sent < 2 + 10
    assert worker.events("grace_expired_requeueing")
    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete(60)
    assert restarted.stop() == 0
    world.check(analyser)
