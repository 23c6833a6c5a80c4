"""Logs an operator can use: one JSON line per event from every logger (the worker's and the
libraries'), with logger, host and service; syslog priorities under journald; readable lines
on a terminal; one line per failed image; a warning when the weight-free baseline runs."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from chimp_worker.ispyb.database import make_engine
from chimp_worker.log import configure_logging, get_logger

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def restore_logging() -> None:
    yield
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    configure_logging("WARNING", "auto")


def json_lines(err: str) -> list[dict]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def test_library_loggers_come_out_as_the_same_json_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configure_logging("INFO", "json")
    get_logger("chimp_worker.test").info("own_event", answer=42)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # SQLAlchemy's echo
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}", create=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT 7 AS seven"))
    engine.dispose()
    try:
        raise ValueError("inside a library")
    except ValueError:
        logging.getLogger("urllib3.connectionpool").error("request failed", exc_info=True)
    records = json_lines(capsys.readouterr().err)
    own = next(r for r in records if r["event"] == "own_event")
    assert (own["answer"], own["logger"], own["level"]) == (42, "chimp_worker.test", "info")
    sql = [r for r in records if r["logger"] == "sqlalchemy.engine.Engine"]
    assert any("SELECT 7 AS seven" in r["event"] for r in sql)
    failed = next(r for r in records if r["event"] == "request failed")
    assert failed["level"] == "error"
    assert "ValueError: inside a library" in failed["exception"]
    for record in records:
        assert record["host"] == HOST
        assert record["service"] == "chimp-worker"
        assert record["timestamp"].endswith("Z")


def worker_stderr(env: dict[str, str], stderr: object, *args: str) -> int:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHIMP_")}
    full.pop("JOURNAL_STREAM", None)
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=full,
        timeout=120,
        check=False,
    ).returncode


@pytest.fixture
def unreachable_worker_env(ispyb_sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "CHIMP_DATABASE_URL": ispyb_sqlite_url,
        "CHIMP_IMAGE_ROOTS": f'["{tmp_path}"]',
        "CHIMP_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F",
        "CHIMP_RETRY_MAX_WAIT_S": "0.2",
    }


def test_under_journald_every_line_carries_its_syslog_priority(
    unreachable_worker_env: dict[str, str], tmp_path: Path
) -> None:
    """stderr is the journal when JOURNAL_STREAM names its device and inode (systemd.exec)."""
    log = tmp_path / "journal.log"
    with log.open("w") as stream:
        info = os.fstat(stream.fileno())
        env = {**unreachable_worker_env, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        status = worker_stderr(env, stream, "run", "--idle-exit", "1")
    assert status == 1
    by_event: dict[str, tuple[str, dict]] = {}
    for line in log.read_text().splitlines():
        assert line[0] == "<", line
        assert line[2] == ">", line
        record = json.loads(line[3:])
        by_event.setdefault(record["event"], (line[1], record))
    assert by_event["worker_starting"][0] == "6"
    assert by_event["baseline_analyser_running"][0] == "4"
    assert by_event["broker_unavailable"][0] == "4"
    priority, failed = by_event["command_failed"]
    assert priority == "3"
    assert failed["exit_status"] == 1
    assert "never reached RabbitMQ" in failed["error"]
    assert failed["logger"] == "chimp_worker.cli"


def test_a_worker_not_on_a_terminal_logs_json_and_warns_about_the_baseline(
    unreachable_worker_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as stream:
        assert worker_stderr(unreachable_worker_env, stream, "run", "--idle-exit", "1") == 1
    *logged, last = log.read_text().splitlines()
    records = json_lines("\n".join(logged))
    warning = next(r for r in records if r["event"] == "baseline_analyser_running")
    assert (warning["level"], warning["schema"]) == ("warning", "BASELINE_CV")
    assert warning["why"] == "no model files set"
    # Each record names its module's logger; the baseline warning comes from where the
    # analyser is built.
    assert {r["logger"] for r in records} >= {"chimp_worker.daemon", "chimp_worker.wiring"}
    # The command's own last word is for people unless the logs are explicitly JSON.
    assert last.startswith("chimp-worker: broker_unavailable: never reached RabbitMQ")


def test_on_a_terminal_the_lines_are_for_people(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        script = (
            "from chimp_worker.log import configure_logging, get_logger;"
            "configure_logging('INFO', 'auto');"
            "get_logger('chimp_worker.test').warning('readable_event', count=3)"
        )
        subprocess.run(
            [sys.executable, "-c", script],
            stderr=follower,
            timeout=60,
            check=True,
        )
        output = re.sub(r"\x1b\[[0-9;]*m", "", os.read(leader, 65536).decode())  # colours
    finally:
        os.close(leader)
        os.close(follower)
    assert "readable_event" in output
    assert "count=3" in output
    assert not output.lstrip().startswith("{")


def test_a_failed_image_is_one_line_with_its_reason_and_detail(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    from helpers.analysers import PixelStatsAnalyser
    from helpers.ispyb_rows import add_plate

    from chimp_worker.images import FilesystemSource
    from chimp_worker.ispyb.database import make_session_factory
    from chimp_worker.pipeline import Pipeline

    engine = make_engine(ispyb_sqlite_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory, drops=2)  # image files never written: both are missing
    source = FilesystemSource([tmp_path / "dls"], path_map={"/dls": str(tmp_path / "dls")})
    pipeline = Pipeline(factory, source, PixelStatsAnalyser(), batch_size=2)
    with structlog.testing.capture_logs() as logs:
        outcome = pipeline.process(plate.inspectionId)
    engine.dispose()
    assert len(outcome.failed) == 2
    for image_id in outcome.failed:
        about = [entry for entry in logs if entry.get("blsample_image_id") == image_id]
        assert [entry["event"] for entry in about] == ["image_failed"], about
        assert about[0]["log_level"] == "warning"
        assert about[0]["reason"] == "image_missing"
        assert str(tmp_path / "dls") in about[0]["detail"]
