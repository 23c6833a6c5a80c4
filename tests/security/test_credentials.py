"""Passwords never reach the screen or the logs: not in ``config show``, not in configuration
errors, not in a worker's log lines and tracebacks when the password is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.faults import REPO, WorkerPool
from helpers.rabbit import RabbitProbe

from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.config import load_settings
from chimp_worker.events import InspectionCompleted
from chimp_worker.ispyb.schema import create_all


def schema_only_database(tmp_path: Path) -> str:
    """An SQLite ISPyB with the schema and no plates: the worker's start-up checks pass."""
    url = f"sqlite:///{tmp_path / 'ispyb.sqlite'}"
    create_all(url)
    return url


DB_SECRET = "Db-S3cret-7f3a"
MQ_SECRET = "Mq-S3cret-91c2"
ARG_SECRET = "Arg-S3cret-55e0"
INI_SECRET = "Ini-S3cret-0b7d"
HTTP_SECRET = "Http-S3cret-c4e8"
SECRETS = (DB_SECRET, MQ_SECRET, ARG_SECRET, INI_SECRET, HTTP_SECRET)


def chimp_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CHIMP_")}
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"secrets {leaked} printed:\n{text}"


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_config_show_masks_every_password_it_knows_of(fmt: str, tmp_path: Path) -> None:
    ini = tmp_path / "ispyb.ini"
    ini.write_text(
        "[ispyb_sqlalchemy]\nusername = chimp\n"
        f"password = {INI_SECRET}\nhost = db\nport = 3306\ndatabase = ispyb\n"
    )
    env = {
        "CHIMP_AMQP_URL": f"amqps://worker:{MQ_SECRET}@rabbit:5671/%2F",
        "CHIMP_DATABASE_CONNECT_ARGS": json.dumps(
            {"passwd": ARG_SECRET, "ssl": {"ca": "/etc/ca.pem", "key": ARG_SECRET}}
        ),
        "CHIMP_IMAGE_URL_TEMPLATE": f"https://imgs:{HTTP_SECRET}@images/{{imageFullPath}}",
        "ISPYB_CREDENTIALS": str(ini),
    }
    result = chimp_worker("config", "show", "--format", fmt, env=env)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)
    assert result.stdout.count("***") >= 5
    assert "mysql+mysqldb://chimp:***@db:3306/ispyb" in result.stdout


def test_a_password_in_the_database_url_query_is_masked_too() -> None:
    url = f"mysql+mysqldb://chimp@db/ispyb?charset=utf8mb4&passwd={DB_SECRET}"
    result = chimp_worker("config", "show", env={"CHIMP_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout)
    assert "passwd=***" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CHIMP_AMQP_URL", f"amqpx://worker:{MQ_SECRET}@rabbit/%2F", "amqp_url"),
        ("CHIMP_DATABASE_URL", f"mysql+mysqldb://u:{DB_SECRET}@db:port/ispyb", "database_url"),
        ("CHIMP_DATABASE_URL", f"mysql+mysqldb//u:{DB_SECRET}@db/ispyb", "database_url"),
        ("CHIMP_DATABASE_URL", f"mysql+nodriver://u:{DB_SECRET}@db/ispyb", "database_url"),
        ("CHIMP_DATABASE_URL", f"oracle://u:{DB_SECRET}@db/ispyb", "database_url"),
        (
            "CHIMP_IMAGE_URL_TEMPLATE",
            f"ftp://u:{HTTP_SECRET}@imgs/{{imageFullPath}}",
            "image_url_template",
        ),
    ],
)
def test_a_bad_setting_holding_a_password_is_one_line_without_it(
    variable: str, value: str, named: str
) -> None:
    for command in (("config", "show"), ("run", "--max-messages", "1")):
        result = chimp_worker(*command, env={variable: value})
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert named in result.stderr
        assert_no_secret(result.stdout + result.stderr)


def test_a_worker_with_a_wrong_database_password_refuses_to_start_and_never_logs_it(
    queue_env: dict[str, str], workers: WorkerPool
) -> None:
    """Exit 2 before consuming: a waiting event is neither taken nor dead-lettered."""
    env = {
        **queue_env,
        "CHIMP_DATABASE_URL": f"mysql+mysqldb://root:{DB_SECRET}@127.0.0.1:3306/chimp_nowhere",
        "CHIMP_DELIVERY_LIMIT": "1",
        "CHIMP_LOG_LEVEL": "DEBUG",
    }
    settings = load_settings(
        amqp_url=env["CHIMP_AMQP_URL"],
        events_queue=env["CHIMP_EVENTS_QUEUE"],
        work_queue=env["CHIMP_WORK_QUEUE"],
        results_exchange=env["CHIMP_RESULTS_EXCHANGE"],
        results_queue=env["CHIMP_RESULTS_QUEUE"],
        delivery_limit=1,
    )
    with Publisher(BrokerOptions.from_settings(settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=42))
    worker = workers.start(env, name="bad-db-password")
    assert worker.wait(60) == 2
    output = worker.output()
    assert "MariaDB error 1045, access denied" in output, "the refusal says what went wrong"
    assert "Traceback" not in output
    assert_no_secret(output)
    probe = RabbitProbe(env["CHIMP_AMQP_URL"])
    try:
        assert probe.count(env["CHIMP_EVENTS_QUEUE"]) == 1, "the event still waits"
        assert probe.count(f"dlq.{env['CHIMP_EVENTS_QUEUE']}") == 0
    finally:
        probe.close()


def test_a_worker_with_a_wrong_broker_password_refuses_to_start_and_never_logs_it(
    queue_env: dict[str, str], workers: WorkerPool, tmp_path: Path
) -> None:
    """Exit 2 like a refused database login: retrying cannot fix a password, and systemd's
    RestartPreventExitStatus=2 keeps the unit from looping on it."""
    env = {
        **queue_env,
        "CHIMP_AMQP_URL": f"amqp://guest:{MQ_SECRET}@127.0.0.1:5672/%2F",
        "CHIMP_DATABASE_URL": schema_only_database(tmp_path),
        "CHIMP_LOG_LEVEL": "DEBUG",
    }
    worker = workers.start(env, name="bad-mq-password")
    assert worker.wait(60) == 2
    failed = worker.wait_for_log("command_failed")
    assert failed["reason"] == "broker_access"
    assert "refused the login (ACCESS_REFUSED)" in failed["error"]
    output = worker.output()
    assert "Traceback" not in output
    assert_no_secret(output)
