"""Settings come from env, file and the ISPyB credentials ini; bad values stop start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chimp_worker.config import database_url_from_credentials, load_settings, mask_url
from chimp_worker.errors import ConfigError


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMP_")}
    full_env.pop("ISPYB_CREDENTIALS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "chimp_worker", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
    )


def write_credentials(path: Path, password: str = "s3cr:t@x") -> Path:
    path.write_text(
        "[ispyb_sqlalchemy]\nusername = chimp\n"
        f"password = {password}\nhost = db.example\nport = 3307\ndatabase = ispyb\n"
    )
    return path


def test_credentials_ini_becomes_a_mysqldb_url_with_the_password_quoted(tmp_path: Path) -> None:
    url = database_url_from_credentials(write_credentials(tmp_path / "creds.ini"))
    assert url == "mysql+mysqldb://chimp:s3cr%3At%40x@db.example:3307/ispyb"


def test_credentials_env_var_overrides_database_url(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ISPYB_CREDENTIALS", str(write_credentials(tmp_path / "c.ini")))
    monkeypatch.setenv("CHIMP_DATABASE_URL", "sqlite:///ignored.sqlite")
    settings = load_settings()
    assert settings.database_url.startswith("mysql+mysqldb://chimp:")
    assert settings.masked()["database_url"] == "mysql+mysqldb://chimp:***@db.example:3307/ispyb"


def test_environment_overrides_the_toml_file(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "chimp.toml"
    config.write_text('score_threshold = 0.7\nwork_queue = "from-file"\n')
    monkeypatch.setenv("CHIMP_WORK_QUEUE", "from-env")
    settings = load_settings(config)
    assert settings.score_threshold == 0.7
    assert settings.work_queue == "from-env"


def test_a_bad_value_names_the_setting_and_what_was_expected(monkeypatch) -> None:
    monkeypatch.setenv("CHIMP_MASK_THRESHOLD", "lots")
    with pytest.raises(ConfigError, match=r"mask_threshold \[CHIMP_MASK_THRESHOLD\].*number"):
        load_settings()


def test_an_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "chimp.toml"
    config.write_text("scor_threshold = 0.7\n")
    with pytest.raises(ConfigError, match="scor_threshold"):
        load_settings(config)


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("amqp://user:pw@rabbit:5672/%2F") == "amqp://user:***@rabbit:5672/%2F"
    assert mask_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    creds = write_credentials(tmp_path / "c.ini", password="hunter2")
    result = run_cli(
        "config",
        "show",
        "--format",
        "json",
        env={"ISPYB_CREDENTIALS": str(creds), "CHIMP_AMQP_URL": "amqps://w:topsecret@mq/%2F"},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["amqp_url"] == "amqps://w:***@mq/%2F"
    assert "hunter2" not in result.stdout
    assert "topsecret" not in result.stdout


def test_wrong_value_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_cli("config", "show", env={"CHIMP_PREFETCH": "0"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "prefetch [CHIMP_PREFETCH]" in result.stderr


def test_every_command_has_help_with_an_example() -> None:
    from click.testing import CliRunner

    from chimp_worker.cli import COMMANDS, cli

    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert "Usage:" in result.output
