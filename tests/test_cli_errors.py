"""Every command ends a failure with one line naming the cause and the fix, and an exit status
from one scheme: 0 success, 1 runtime failure, 2 configuration or usage, 130 interrupted.
Against the real services: a wrong password and missing tables on MariaDB, a refused login and
an unknown vhost on RabbitMQ, a broker that is not there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from chimp_worker.cli import cli

SECRET = "n0t-th1s-0ne"
READ_ONLY_COMMANDS = [
    ["results", "--barcode", "CQX-0001"],
    ["report", "--barcode", "CQX-0001", "--out", "report"],
    ["replay", "--dry-run"],
    ["db", "current"],
]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """In-process; image roots set so that `report` has no other note to make."""
    return CliRunner().invoke(cli, list(args), env={"CHIMP_IMAGE_ROOTS": '["/tmp"]', **(env or {})})


def one_line(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_the_exit_statuses() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for status in ("0    success", "1    runtime failure", "2    configuration", "130  "):
        assert f"\n    {status}" in result.output
    assert "systemd does not restart on 2" in result.output


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_read_only_commands_refuse_a_missing_sqlite_file_and_never_create_it(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo.sqlite"
    result = invoke(*command, "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 2
    line = one_line(result)
    assert f"the SQLite file {missing} does not exist" in line
    assert "chimp-worker db upgrade" in line
    assert not missing.exists()


@pytest.mark.mariadb
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_wrong_mariadb_password_is_one_line_exit_2_and_never_shown(
    mariadb_url: str, command: list[str]
) -> None:
    wrong = mariadb_url.replace("mysql+mysqldb://root@", f"mysql+mysqldb://root:{SECRET}@")
    assert wrong != mariadb_url
    result = invoke(*command, "--database-url", wrong)
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "MariaDB error 1045, access denied" in line
    assert "check the user and password" in line
    assert SECRET not in result.output


@pytest.mark.mariadb
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS[:3], ids=lambda c: " ".join(c[:2]))
def test_missing_tables_say_to_run_db_upgrade(mariadb_url: str, command: list[str]) -> None:
    result = invoke(*command, "--database-url", mariadb_url)
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "MariaDB error 1146" in line
    assert "run `chimp-worker db upgrade`" in line


@pytest.mark.mariadb
def test_an_unreachable_database_is_a_runtime_failure_exit_1() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke(
        "results", "--barcode", "X", "--database-url", f"mysql+mysqldb://u@127.0.0.1:{port}/x"
    )
    assert result.exit_code == 1, result.output
    line = one_line(result)
    assert "database_unavailable" in line
    assert "check that the database server is running" in line


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    ispyb_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chimp_worker.ispyb import queries

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the plate query broke")

    monkeypatch.setattr(queries, "find_plate", broken)
    result = invoke("results", "--barcode", "X", "--database-url", ispyb_sqlite_url)
    assert result.exit_code == 1
    line = one_line(result)
    assert "unexpected error: RuntimeError: the plate query broke" in line
    assert "--debug" in line
    debug = invoke("results", "--barcode", "X", "--database-url", ispyb_sqlite_url, "--debug")
    assert isinstance(debug.exception, RuntimeError), "the traceback is Python's own"


def test_ctrl_c_exits_130(ispyb_sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from chimp_worker.ispyb import queries

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(queries, "find_plate", interrupted)
    result = invoke("results", "--barcode", "X", "--database-url", ispyb_sqlite_url)
    assert result.exit_code == 130
    assert one_line(result) == "chimp-worker: interrupted"


def test_a_missing_optional_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import now fails as if absent
    for name in [n for n in sys.modules if n.startswith("chimp_worker.evaluate")]:
        monkeypatch.delitem(sys.modules, name)
    result = invoke("evaluate", "detector", "--annotations", str(tmp_path / "coco.json"))
    assert result.exit_code == 2
    assert "pip install 'chimp-worker[evaluate]'" in one_line(result)


def worker(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHIMP_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", "run", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def worker_env(ispyb_sqlite_url: str, tmp_path: Path, queue_prefix: str) -> dict[str, str]:
    return {
        "CHIMP_DATABASE_URL": ispyb_sqlite_url,
        "CHIMP_IMAGE_ROOTS": f'["{tmp_path}"]',
        "CHIMP_EVENTS_QUEUE": f"{queue_prefix}.events",
        "CHIMP_WORK_QUEUE": f"{queue_prefix}.work",
        "CHIMP_RESULTS_QUEUE": "",
        "CHIMP_RESULTS_EXCHANGE": f"{queue_prefix}.results",
        "CHIMP_RETRY_MAX_WAIT_S": "0.2",
    }


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"amqp://guest:{SECRET}@127.0.0.1:5672/%2F", "refused the login (ACCESS_REFUSED)"),
        ("amqp://guest:guest@127.0.0.1:5672/chimp-no-such-vhost", "refused the virtual host"),
    ],
    ids=["password", "vhost"],
)
def test_the_daemon_stops_with_2_when_the_broker_refuses_login_or_vhost(
    worker_env: dict[str, str], amqp_url: str, url: str, expected: str
) -> None:
    result = worker({**worker_env, "CHIMP_AMQP_URL": url}, "--idle-exit", "30")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    refused = invoke("dlq", "list", env={"CHIMP_AMQP_URL": url})
    assert refused.exit_code == 2
    assert expected in one_line(refused)


def test_an_idle_exit_without_ever_reaching_the_broker_is_not_success(
    worker_env: dict[str, str],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**worker_env, "CHIMP_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F"}
    result = worker(env, "--idle-exit", "1")
    assert result.returncode == 1, result.stderr
    assert "never reached RabbitMQ within --idle-exit 1 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_amqp_url_with_a_port_that_is_not_a_number_is_a_configuration_error(
    worker_env: dict[str, str],
) -> None:
    env = {**worker_env, "CHIMP_AMQP_URL": f"amqp://guest:{SECRET}@rabbit:port/%2F"}
    result = worker(env, "--idle-exit", "1")
    assert result.returncode == 2
    assert "amqp_url [CHIMP_AMQP_URL]" in result.stderr
    assert "numeric port" in result.stderr
    assert SECRET not in result.stderr
    assert result.stderr.strip().count("\n") == 0
