"""The worker started the way chimp-worker.service starts it, with a test socket as systemd.

Same command line (ExecStart with the install prefix mapped to this virtualenv), the unit's
Environment= lines, the example EnvironmentFile (services, queue names and paths pointed at
this machine), a working directory standing in for StateDirectory=, and the variables systemd
adds for Type=notify with a watchdog: NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID. The
watchdog interval is 3 s instead of the unit's 60 s so that pings show up within seconds.
Not reproduced: User= (tests run as whoever runs them) and the sandboxing directives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.deploy import (
    ALIVE_SCRIPT,
    ENV_EXAMPLE,
    STOP_MARGIN_S,
    TOOLS,
    UNIT_FILE,
    parse_env_file,
    parse_unit,
    timespan_seconds,
    unit_value,
)
from helpers.rabbit import RabbitProbe

from chimp_worker.config import Settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

INSTALL_PREFIX = "/opt/chimp-worker/venv/bin/"
WATCHDOG_S = 3.0
READY_TIMEOUT_S = 120.0
# systemd's default PATH for services; the rest of this process's environment is not passed.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket like systemd's; in /tmp because socket paths are short."""
    directory = tempfile.mkdtemp(prefix="chimp-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def service_environment(
    tmp_path: Path, amqp_url: str, queue_prefix: str
) -> tuple[dict[str, str], Path]:
    """The environment systemd would build: unit Environment=, then the EnvironmentFile."""
    state, cache, runtime = tmp_path / "state", tmp_path / "cache", tmp_path / "run"
    for directory in (state, cache, runtime):
        directory.mkdir()
    host_paths = {
        "/var/lib/chimp-worker": str(state),
        "/var/cache/chimp-worker": str(cache),
        "/run/chimp-worker": str(runtime),
    }

    def on_this_machine(value: str) -> str:
        for unit_path, test_path in host_paths.items():
            value = value.replace(unit_path, test_path)
        return value

    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8"}
    unit = parse_unit(UNIT_FILE)
    for name, value in unit["Service"]:
        if name == "Environment":
            for assignment in value.split():
                key, _, val = assignment.partition("=")
                env[key] = on_this_machine(val)

    example = parse_env_file(ENV_EXAMPLE)
    overrides = {
        "CHIMP_DATABASE_URL": f"sqlite:///{state / 'chimp-worker.sqlite'}",
        "CHIMP_AMQP_URL": amqp_url,
        "CHIMP_EVENTS_QUEUE": f"{queue_prefix}.events",
        "CHIMP_WORK_QUEUE": f"{queue_prefix}.work",
        "CHIMP_RESULTS_EXCHANGE": f"{queue_prefix}.results",
        "CHIMP_RESULTS_QUEUE": f"{queue_prefix}.results-ready",
        "CHIMP_METRICS_PORT": "0",
        "CHIMP_TORCH_THREADS": "1",
    }
    # No model files on this machine: the worker runs the baseline analyser.
    dropped = {"CHIMP_CLASSIFIER_PATH", "CHIMP_VMXI_DETECTOR_PATH", "CHIMP_XCHEM_DETECTOR_PATH"}
    env_file = tmp_path / "chimp-worker.env"
    lines = [f"{key}={on_this_machine(value)}" for key, value in example.items()]
    lines = [line for line in lines if line.split("=", 1)[0] not in dropped | set(overrides)]
    lines += [f"{key}={value}" for key, value in overrides.items()]
    env_file.write_text("\n".join(lines) + "\n")
    assert unit_value(unit, "Service", "EnvironmentFile").endswith("/" + ENV_EXAMPLE.stem)
    env.update(parse_env_file(env_file))
    return env, state


def receive(sock: socket.socket, timeout_s: float) -> list[tuple[float, str]]:
    """Every datagram that arrives within timeout_s, with its arrival time."""
    received = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        received.append((time.monotonic(), data.decode()))
    return received


def receive_until(
    sock: socket.socket, wanted: str, timeout_s: float, worker: subprocess.Popen[bytes], log: Path
) -> list[tuple[float, str]]:
    """Datagrams up to the one carrying ``wanted``; fails early if the worker exits."""
    received = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        sock.settimeout(1.0)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        received.append((time.monotonic(), data))
        if wanted in data.split("\n"):
            return received
    raise AssertionError(
        f"no {wanted} within {timeout_s} s (worker exit status {worker.poll()}); "
        f"received {received}; log:\n{log.read_text()[-3000:]}"
    )


def test_worker_started_like_the_unit_notifies_ready_pings_the_watchdog_and_stops_cleanly(
    tmp_path: Path, amqp_url: str, queue_prefix: str, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, socket_path = notify_socket
    unit = parse_unit(UNIT_FILE)
    exec_start = unit_value(unit, "Service", "ExecStart").split()
    assert exec_start[0].startswith(INSTALL_PREFIX)
    argv = [str(TOOLS / exec_start[0].removeprefix(INSTALL_PREFIX)), *exec_start[1:]]
    env, working_directory = service_environment(tmp_path, amqp_url, queue_prefix)
    settings = Settings(
        amqp_url=amqp_url,
        events_queue=env["CHIMP_EVENTS_QUEUE"],
        work_queue=env["CHIMP_WORK_QUEUE"],
        results_exchange=env["CHIMP_RESULTS_EXCHANGE"],
        results_queue=env["CHIMP_RESULTS_QUEUE"],
    )
    liveness_file = Path(env["CHIMP_LIVENESS_FILE"])
    assert liveness_file.parent == tmp_path / "run"

    # The README's order: schema first, with the same environment, then the service.
    upgrade = subprocess.run(
        [argv[0], "db", "upgrade"],
        env=env,
        cwd=working_directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgrade.returncode == 0, upgrade.stderr

    service_env = {
        **env,
        "NOTIFY_SOCKET": socket_path,
        "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000)),
    }
    log_path = tmp_path / "worker.log"
    rabbit = RabbitProbe(amqp_url)
    with log_path.open("w") as log:
        # systemd sets WATCHDOG_PID to the service's pid: the shell's pid, kept across exec.
        worker = subprocess.Popen(
            ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv],
            env=service_env,
            cwd=working_directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        started = time.monotonic()
        before_ready = receive_until(sock, "READY=1", READY_TIMEOUT_S, worker, log_path)
        ready_at = before_ready[-1][0]
        print(f"READY=1 after {ready_at - started:.1f} s")
        # Ready means consuming: the queues from the environment file exist on the broker.
        assert rabbit.count(settings.work_queue) == 0
        assert rabbit.count(settings.events_queue) == 0

        after_ready = receive(sock, 3 * WATCHDOG_S)
        pings = [at for at, message in after_ready if message == "WATCHDOG=1"]
        assert len(pings) >= 3, after_ready
        gaps = [later - earlier for earlier, later in zip([ready_at, *pings], pings, strict=False)]
        # systemd kills a service whose pings are further apart than WatchdogSec.
        assert max(gaps) < WATCHDOG_S, gaps
        print(
            f"watchdog pings every {min(gaps):.2f}-{max(gaps):.2f} s (WATCHDOG_USEC {WATCHDOG_S} s)"
        )

        alive = subprocess.run(
            ["sh", str(ALIVE_SCRIPT), str(liveness_file)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert alive.returncode == 0, alive.stderr

        # systemctl stop: KillSignal=SIGTERM to the main process (KillMode=mixed).
        assert unit_value(unit, "Service", "KillSignal") == "SIGTERM"
        stop_sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        stop_timeout = timespan_seconds(unit_value(unit, "Service", "TimeoutStopSec"))
        assert stop_timeout >= float(env["CHIMP_GRACE_PERIOD_S"]) + STOP_MARGIN_S
        returncode = worker.wait(timeout=stop_timeout)
        print(f"exit {returncode} {time.monotonic() - stop_sent:.1f} s after SIGTERM")
        after_stop = [message for _, message in receive(sock, 0.2)]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        rabbit.delete(settings)
        rabbit.close()

    log_text = log_path.read_text()
    assert returncode == 0, log_text[-3000:]
    assert any("STOPPING=1" in message.split("\n") for message in after_stop), after_stop
    assert "Traceback" not in log_text, log_text[-3000:]
    # A clean exit leaves no liveness file a probe could mistake for a live worker.
    assert not liveness_file.exists()
