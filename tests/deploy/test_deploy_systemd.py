"""The systemd unit, its environment file and its user, checked with systemd's own tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.deploy import (
    DEPLOY,
    ENV_EXAMPLE,
    STOP_MARGIN_S,
    UNIT_FILE,
    parse_env_file,
    parse_unit,
    timespan_seconds,
    unit_value,
    unknown_worker_env,
)

from chimp_worker.config import Settings, load_settings

Unit = dict[str, list[tuple[str, str]]]


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT_FILE)


def test_unit_is_a_notify_service_with_watchdog_restart_and_environment_file(unit: Unit) -> None:
    assert unit_value(unit, "Service", "Type") == "notify"
    assert timespan_seconds(unit_value(unit, "Service", "WatchdogSec")) == 60
    assert unit_value(unit, "Service", "Restart") == "on-failure"
    # A configuration error (exit 2) is not retried in a loop.
    assert unit_value(unit, "Service", "RestartPreventExitStatus") == "2"
    assert unit_value(unit, "Service", "EnvironmentFile") == "/etc/chimp-worker/chimp-worker.env"
    assert unit_value(unit, "Service", "ExecStart").split() == [
        "/opt/chimp-worker/venv/bin/chimp-worker",
        "run",
    ]


def test_unit_runs_as_a_dedicated_user_with_the_usual_hardening(unit: Unit) -> None:
    assert unit_value(unit, "Service", "User") == "chimp-worker"
    assert unit_value(unit, "Service", "ProtectSystem") == "strict"
    assert unit_value(unit, "Service", "NoNewPrivileges") == "yes"
    assert unit_value(unit, "Service", "StateDirectory") == "chimp-worker"
    assert unit_value(unit, "Service", "WorkingDirectory") == "/var/lib/chimp-worker"
    read_only = unit_value(unit, "Service", "ReadOnlyPaths").split()
    assert "-/opt/chimp-worker/models" in read_only
    assert unit_value(unit, "Service", "CapabilityBoundingSet") == ""


def test_stop_timeout_covers_the_workers_grace_period(unit: Unit) -> None:
    stop_timeout = timespan_seconds(unit_value(unit, "Service", "TimeoutStopSec"))
    default_grace = Settings.model_fields["grace_period_s"].default
    configured_grace = float(parse_env_file(ENV_EXAMPLE)["CHIMP_GRACE_PERIOD_S"])
    assert configured_grace == default_grace == 120
    assert stop_timeout == default_grace + STOP_MARGIN_S


def test_sysusers_entry_creates_the_units_user_with_its_state_directory_as_home(
    tmp_path: Path, unit: Unit
) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [
            "systemd-sysusers",
            f"--root={tmp_path}",
            str(DEPLOY / "systemd" / "chimp-worker.sysusers.conf"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    entry = passwd[unit_value(unit, "Service", "User")]
    assert int(entry[2]) != 0
    assert entry[5] == "/var/lib/" + unit_value(unit, "Service", "StateDirectory")
    assert entry[6] == "/usr/sbin/nologin"


def test_environment_file_example_names_only_real_settings() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    assert unknown_worker_env(list(env)) == []


def test_environment_file_example_loads_into_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("CHIMP_")]:
        monkeypatch.delenv(name)
    for name, value in parse_env_file(ENV_EXAMPLE).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.image_roots == [Path("/dls")]
    assert settings.queue_arguments == "policy"
    assert settings.liveness_file == Path("/run/chimp-worker/alive")
    assert settings.effective_analyser == "chimp"
    assert settings.database_url.startswith("mysql+mysqldb://chimp_worker:")


def test_liveness_file_lives_in_the_units_runtime_directory(unit: Unit) -> None:
    runtime = unit_value(unit, "Service", "RuntimeDirectory")
    liveness = Path(parse_env_file(ENV_EXAMPLE)["CHIMP_LIVENESS_FILE"])
    assert liveness.parent == Path("/run") / runtime
