"""A worker whose credentials, grants or schema are wrong refuses to start: it must never take
messages only to dead-letter every one of them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from chimp_worker.errors import ConfigError
from chimp_worker.ispyb.database import check_database_access, make_engine


def run_worker(
    database_url: str, queue_prefix: str, image_root: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMP_")}
    env.update(
        CHIMP_DATABASE_URL=database_url,
        CHIMP_EVENTS_QUEUE=f"{queue_prefix}.events",
        CHIMP_WORK_QUEUE=f"{queue_prefix}.work",
        CHIMP_ANALYSER="baseline",
        CHIMP_IMAGE_ROOTS=f'["{image_root}"]',
    )
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", "run", "--idle-exit", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_database_without_the_schema_stops_start_up_with_exit_2(
    tmp_path: Path, queue_prefix: str
) -> None:
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    result = run_worker(f"sqlite:///{empty}", queue_prefix, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no such table" in result.stderr
    assert "chimp-worker db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_file_that_does_not_exist_is_refused_and_not_created(
    tmp_path: Path, queue_prefix: str
) -> None:
    missing = tmp_path / "typo.sqlite"
    result = run_worker(f"sqlite:///{missing}", queue_prefix, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"the SQLite file {missing} does not exist" in result.stderr
    assert not missing.exists()


@pytest.mark.mariadb
def test_a_wrong_password_stops_start_up_with_exit_2_and_no_secret(
    mariadb_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    wrong = mariadb_url.replace("mysql+mysqldb://root@", "mysql+mysqldb://root:n0t-this-one@")
    assert wrong != mariadb_url
    result = run_worker(wrong, queue_prefix, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "MariaDB error 1045, access denied" in result.stderr
    assert "n0t-this-one" not in result.stderr + result.stdout


@pytest.mark.mariadb
def test_a_missing_worker_table_is_a_configuration_error(mariadb_url: str) -> None:
    with pytest.raises(ConfigError, match="1146"):
        check_database_access(make_engine(mariadb_url))


def test_an_unreachable_database_lets_the_daemon_start_and_retry_per_message() -> None:
    engine = create_engine(
        "mysql+mysqldb://root@127.0.0.1:1/ispyb", connect_args={"connect_timeout": 2}
    )
    assert "cannot connect" in (check_database_access(engine) or "")
