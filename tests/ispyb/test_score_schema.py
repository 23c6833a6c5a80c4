"""The score schema a facility must add: found missing, the exact SQL for its administrators,
start-up refused (exit 2) until it is there, a disabled schema never written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.facility import add_score_schemas
from helpers.ispyb_rows import add_plate, make_analysis, snapshot
from sqlalchemy import text
from structlog.testing import capture_logs

from chimp_worker.analysis import BASELINE_SCHEMA, CHIMP_SCHEMA
from chimp_worker.cli import cli, main
from chimp_worker.errors import DatabaseSchemaError, MissingScoreClassError, ScoreSchemaError
from chimp_worker.ispyb import score_schema
from chimp_worker.ispyb.database import check_database_access, make_engine, make_session_factory
from chimp_worker.ispyb.writer import write_image_result

BASELINE_SQL = (
    "INSERT INTO BLSampleImageAutoScoreSchema (blSampleImageAutoScoreSchemaId, schemaName, "
    "enabled) VALUES (3, 'BASELINE_CV', 1);",
    "INSERT INTO BLSampleImageAutoScoreClass (blSampleImageAutoScoreClassId, "
    "blSampleImageAutoScoreSchemaId, scoreClass) VALUES (9, 3, 'clear'), (10, 3, 'crystal'), "
    "(11, 3, 'precipitant'), (12, 3, 'other');",
)


def check(url: str, name: str) -> score_schema.ScoreSchemaCheck:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return score_schema.check(connection, name)
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_a_facility_has_chimp_and_gets_the_exact_sql_for_the_baseline(bare_facility_url):
    chimp = check(bare_facility_url, CHIMP_SCHEMA)
    assert chimp.ready
    assert (chimp.schema_id, dict(chimp.class_ids)) == (
        2,
        {"clear": 5, "crystal": 6, "precipitant": 7, "other": 8},
    )
    baseline = check(bare_facility_url, BASELINE_SCHEMA)
    assert not baseline.ready
    assert baseline.statements == BASELINE_SQL
    assert baseline.warnings == ()
    execute(bare_facility_url, *baseline.statements)  # what the administrators run
    after = check(bare_facility_url, BASELINE_SCHEMA)
    assert after.ready
    assert (after.schema_id, after.class_ids["crystal"]) == (3, 10)


def test_a_disabled_schema_and_missing_classes_get_their_own_statements(bare_facility_url):
    execute(
        bare_facility_url,
        "UPDATE BLSampleImageAutoScoreSchema SET enabled = 0 WHERE schemaName = 'CHIMP'",
        "DELETE FROM BLSampleImageAutoScoreClass WHERE blSampleImageAutoScoreClassId = 7",
    )
    found = check(bare_facility_url, CHIMP_SCHEMA)
    assert (found.schema_id, found.enabled) == (2, False)
    assert found.statements == (
        "UPDATE BLSampleImageAutoScoreSchema SET enabled = 1 "
        "WHERE blSampleImageAutoScoreSchemaId = 2;",
        "INSERT INTO BLSampleImageAutoScoreClass (blSampleImageAutoScoreClassId, "
        "blSampleImageAutoScoreSchemaId, scoreClass) VALUES (9, 2, 'precipitant');",
    )
    assert "disabled (enabled = 0)" in found.describe()


def test_a_schema_id_above_nine_is_warned_about(bare_facility_url):
    execute(
        bare_facility_url,
        *(
            f"INSERT INTO BLSampleImageAutoScoreSchema (blSampleImageAutoScoreSchemaId, "
            f"schemaName, enabled) VALUES ({i}, 'LOCAL{i}', 1)"
            for i in range(3, 10)
        ),
    )
    found = check(bare_facility_url, BASELINE_SCHEMA)
    assert found.statements[0].endswith("VALUES (10, 'BASELINE_CV', 1);")
    assert found.warnings == (
        "schema 'BASELINE_CV' has id 10: SynchWeb's routes accept a single-digit schema id, "
        "so staff may not be able to pick it there",
    )
    assert "-- warning: schema 'BASELINE_CV' has id 10" in found.sql()
    execute(bare_facility_url, *found.statements)
    engine = make_engine(bare_facility_url)
    try:
        with capture_logs() as logs:  # start-up goes ahead, and says so
            assert check_database_access(engine, BASELINE_SCHEMA, analyser="baseline") is None
    finally:
        engine.dispose()
    assert [entry["event"] for entry in logs] == ["score_schema_id_above_9"]
    assert "has id 10" in logs[0]["detail"]


def test_the_preflight_refuses_with_the_statements_and_accepts_once_added(bare_facility_url):
    engine = make_engine(bare_facility_url)
    try:
        with pytest.raises(ScoreSchemaError) as refused:
            check_database_access(engine, BASELINE_SCHEMA, analyser="baseline")
        message = str(refused.value)
        assert "ISPyB has no auto-score schema 'BASELINE_CV'" in message
        assert "which the baseline analyser writes under" in message
        for statement in BASELINE_SQL:
            assert f"  {statement}" in message
        assert check_database_access(engine, CHIMP_SCHEMA, analyser="chimp") is None
        with engine.begin() as connection:
            add_score_schemas(connection, [BASELINE_SCHEMA])
        assert check_database_access(engine, BASELINE_SCHEMA, analyser="baseline") is None
    finally:
        engine.dispose()


def test_db_score_schema_prints_and_refuses_to_apply_on_a_facility(bare_facility_url):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--database-url", bare_facility_url, "db", "score-schema", "--schema", "BASELINE_CV"],
    )
    assert result.exit_code == 0, result.output
    assert result.output == (
        "-- ISPyB has no auto-score schema 'BASELINE_CV'\n" + "\n".join(BASELINE_SQL) + "\n"
    )
    refused = runner.invoke(
        cli, ["--database-url", bare_facility_url, "db", "score-schema", "--apply"]
    )
    assert refused.exit_code == DatabaseSchemaError.exit_status == 2
    assert "facility's ISPyB" in refused.output
    assert not check(bare_facility_url, BASELINE_SCHEMA).ready


def test_db_score_schema_applies_on_a_development_database(sqlite_url):
    from chimp_worker.ispyb.schema import create_all

    create_all(sqlite_url)
    execute(
        sqlite_url,
        "DELETE FROM BLSampleImageAutoScoreClass WHERE blSampleImageAutoScoreSchemaId = 3",
        "DELETE FROM BLSampleImageAutoScoreSchema WHERE blSampleImageAutoScoreSchemaId = 3",
    )
    result = CliRunner().invoke(
        cli,
        ["--database-url", sqlite_url, "db", "score-schema", "--schema", "BASELINE_CV", "--apply"],
    )
    assert result.exit_code == 0, result.output
    assert BASELINE_SQL[0] in result.output
    assert "-- applied on" in result.output
    assert result.output.endswith("is ready: clear 9, crystal 10, precipitant 11, other 12\n")
    again = CliRunner().invoke(cli, ["--database-url", sqlite_url, "db", "score-schema"])
    assert "-- auto-score schema 'BASELINE_CV' (id 3) is ready" in again.output


def test_a_disabled_schema_is_never_written(ispyb_url):
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = add_plate(factory)
    execute(
        ispyb_url, "UPDATE BLSampleImageAutoScoreSchema SET enabled = 0 WHERE schemaName = 'CHIMP'"
    )
    before = snapshot(factory)
    with pytest.raises(MissingScoreClassError) as refused:
        write_image_result(factory, plate.imageIds[0], make_analysis())
    assert refused.value.reason == "score_schema_disabled"
    assert snapshot(factory) == before
    engine.dispose()


def run_command(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMP_")}
    env.update(
        CHIMP_DATABASE_URL=url,
        CHIMP_ANALYSER="baseline",
        CHIMP_IMAGE_ROOTS=f'["{tmp_path}"]',
        CHIMP_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F",  # never reached: refused before
    )
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_run_refuses_to_start_without_the_baseline_schema_exit_2(bare_facility_url, tmp_path):
    result = run_command(bare_facility_url, tmp_path, "run", "--idle-exit", "1")
    assert result.returncode == 2, result.stderr
    assert "ISPyB has no auto-score schema 'BASELINE_CV'" in result.stderr
    for statement in BASELINE_SQL:
        assert statement in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_refuses_to_start_without_the_baseline_schema(
    bare_facility_url, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CHIMP_DATABASE_URL", bare_facility_url)
    monkeypatch.setenv("CHIMP_ANALYSER", "baseline")
    monkeypatch.setenv("CHIMP_IMAGE_ROOTS", f'["{tmp_path}"]')
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--local"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert BASELINE_SQL[0] in err
    with make_engine(bare_facility_url).connect() as connection:  # nothing was reopened
        assert connection.execute(text("SELECT COUNT(*) FROM chimp_inspection")).scalar() == 0
