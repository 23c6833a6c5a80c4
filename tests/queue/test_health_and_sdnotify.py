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

from chimp_worker import __version__
from chimp_worker.analysis import ModelRef
from chimp_worker.config import Settings
from chimp_worker.handling import backoff_delay
from chimp_worker.health import HealthServer, Liveness, WorkWatch
from chimp_worker.metrics import WorkerMetrics
from chimp_worker.sdnotify import SystemdNotifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def headers(url: str, method: str) -> dict[str, str]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
        return dict(response.headers)


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


def test_head_is_answered_like_get_without_a_body_and_other_methods_are_refused(
    health: tuple[HealthServer, Liveness, WorkerMetrics, FakeClock],
) -> None:
    server, liveness, _metrics, _clock = health
    base = f"http://127.0.0.1:{server.port}"
    liveness.beat()
    assert get(f"{base}/healthz", "HEAD") == (200, "")
    assert get(f"{base}/metrics", "HEAD") == (200, "")
    head = headers(f"{base}/metrics", "HEAD")
    assert head["Content-Type"].startswith("text/plain; version=0.0.4")
    assert int(head["Content-Length"]) > 1000
    assert get(f"{base}/metrics", "POST")[0] == 405
    assert get(f"{base}/nothing", "HEAD")[0] == 404


def test_metrics_carry_process_figures_and_say_which_analyser_and_models_run(
    health: tuple[HealthServer, Liveness, WorkerMetrics, FakeClock],
) -> None:
    server, _liveness, metrics, _clock = health
    classifier = ModelRef("classifier", "convnext_tiny", "ab" * 32)
    metrics.describe_analyser("chimp", "CHIMP", [classifier])
    _status, exposition = get(f"http://127.0.0.1:{server.port}/metrics")
    assert metrics.value("process_resident_memory_bytes") > 10_000_000
    assert metrics.value("process_cpu_seconds_total") > 0
    assert "python_info{" in exposition
    expected_analyser = (
        f'chimp_analyser_info{{analyser="chimp",schema="CHIMP",version="{__version__}"}} 1.0'
    )
    assert expected_analyser in exposition
    expected_model = (
        f'chimp_model_info{{name="convnext_tiny",role="classifier",sha256="{"ab" * 32}"}} 1.0'
    )
    assert expected_model in exposition
    assert "chimp_abandoned_threads 0.0" in exposition


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    assert Settings().metrics_address == "127.0.0.1"
    liveness = Liveness(timeout_s=5)
    server = HealthServer(liveness, WorkerMetrics.create().registry, port=0).start()
    try:
        assert server.host == "127.0.0.1"
        outward = _outward_address()
        if outward is not None:  # a machine with a network interface: it is not listening there
            with (
                pytest.raises(ConnectionRefusedError),
                socket.create_connection((outward, server.port), 2),
            ):
                pass
    finally:
        server.stop()


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_stalled_work_turns_healthz_unhealthy_and_stops_touching_the_file(
    health: tuple[HealthServer, Liveness, WorkerMetrics, FakeClock], tmp_path: Path
) -> None:
    server, liveness, _metrics, clock = health
    liveness.path = tmp_path / "alive"
    liveness.beat()
    base = f"http://127.0.0.1:{server.port}"
    assert get(f"{base}/healthz")[0] == 200
    liveness.set_stalled("1 message(s) stopped moving: work message m1 silent for 400 s")
    os.utime(liveness.path, (0, 0))
    clock.now += 2
    liveness.beat()  # the I/O loop still turns
    assert liveness.path.stat().st_mtime == 0, "not touched while the work is stalled"
    assert not liveness.is_alive()
    assert get(f"{base}/healthz") == (
        503,
        "stalled: 1 message(s) stopped moving: work message m1 silent for 400 s\n",
    )
    liveness.set_stalled(None)
    clock.now += 2
    liveness.beat()
    assert liveness.path.stat().st_mtime > 0
    assert get(f"{base}/healthz")[0] == 200


def test_a_work_watch_is_overdue_past_its_steps_deadline_plus_the_stall_timeout() -> None:
    clock = FakeClock()
    watch = WorkWatch(10, clock=clock)
    clock.now += 9
    assert not watch.overdue()
    watch.expect(100, "analysing 4 images")  # a bounded step: 100 s of deadline
    clock.now += 109
    assert not watch.overdue()
    clock.now += 2
    assert watch.overdue()
    assert (watch.doing, watch.silent_s()) == ("analysing 4 images", 111)
    watch.beat("writing results")
    assert not watch.overdue()


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
