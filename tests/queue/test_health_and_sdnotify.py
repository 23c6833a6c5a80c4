"""Liveness (file and /healthz), Prometheus exposition, systemd notify and back-off maths."""

from __future__ import annotations

import os
import random
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chimp_worker.handling import backoff_delay
from chimp_worker.health import HealthServer, Liveness
from chimp_worker.metrics import WorkerMetrics
from chimp_worker.sdnotify import SystemdNotifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_liveness_is_dead_before_the_first_beat_and_after_the_timeout() -> None:
    clock = FakeClock()
    liveness = Liveness(timeout_s=10, clock=clock)
    assert not liveness.is_alive()
    liveness.beat()
    clock.now += 9.5
    assert liveness.is_alive()
    clock.now += 1.0
    assert not liveness.is_alive()
    assert liveness.age_s() == pytest.approx(10.5)


def test_the_liveness_file_is_touched_by_beats_and_removed_on_clear(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "run" / "alive"
    liveness = Liveness(timeout_s=10, path=path, clock=clock)
    liveness.beat()
    assert path.exists()
    os.utime(path, (0, 0))
    clock.now += 0.5
    liveness.beat()  # within a second of the last touch: not touched again
    assert path.stat().st_mtime == 0
    clock.now += 1.0
    liveness.beat()
    assert path.stat().st_mtime > 0
    liveness.clear()
    assert not path.exists()


@pytest.fixture
def health() -> Iterator[tuple[HealthServer, Liveness, WorkerMetrics, FakeClock]]:
    clock = FakeClock()
    liveness = Liveness(timeout_s=5, clock=clock)
    metrics = WorkerMetrics.create()
    server = HealthServer(liveness, metrics.registry, port=0, host="127.0.0.1").start()
    yield server, liveness, metrics, clock
    server.stop()


def test_healthz_follows_the_io_loop_and_metrics_are_exposed(
    health: tuple[HealthServer, Liveness, WorkerMetrics, FakeClock],
) -> None:
    server, liveness, metrics, clock = health
    base = f"http://127.0.0.1:{server.port}"
    assert get(f"{base}/healthz")[0] == 503
    liveness.beat()
    assert get(f"{base}/healthz") == (200, "ok: I/O loop last turned 0.0s ago\n")
    clock.now += 6
    status, text = get(f"{base}/healthz")
    assert (status, text.split(":")[0]) == (503, "stalled")
    metrics.messages.labels("work", "acked").inc(3)
    metrics.failures.labels("image_corrupt").inc()
    status, exposition = get(f"{base}/metrics")
    assert status == 200
    assert 'chimp_messages_total{outcome="acked",queue="work"} 3.0' in exposition
    assert 'chimp_failures_total{reason="image_corrupt"} 1.0' in exposition
    assert get(f"{base}/nothing")[0] == 404


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_notifier_sends_ready_and_paces_watchdog_pings_to_half_the_interval(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    clock = FakeClock()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}, clock=clock)
    assert notifier.watchdog_interval_s == 4.0
    assert notifier.ready("consuming")
    assert sock.recv(100) == b"READY=1\nSTATUS=consuming"
    assert notifier.watchdog()
    assert sock.recv(100) == b"WATCHDOG=1"
    clock.now += 1.9
    assert not notifier.watchdog()
    clock.now += 0.2
    assert notifier.watchdog()
    assert sock.recv(100) == b"WATCHDOG=1"


def test_notifier_reaches_an_abstract_namespace_socket() -> None:
    name = f"chimp-test-{os.getpid()}-{random.randrange(10**9)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(100) == b"STOPPING=1"


def test_outside_systemd_the_notifier_does_nothing() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(env).watchdog_interval_s is None


def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter() -> None:
    rng = random.Random(7)
    samples = [[backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(400)] for attempt in range(7)]
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for values, cap in zip(samples, caps, strict=True):
        assert min(values) >= 0
        assert max(values) <= cap
        assert max(values) > 0.9 * cap  # jitter spans the whole range
