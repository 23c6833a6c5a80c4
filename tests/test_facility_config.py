"""The facility's own configuration files: broker credentials in python-workflows' ini format or
zocalo's YAML, ISPyB credentials read literally, the default settings file, the shipped
example, and ``config show`` naming where each value came from."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from chimp_worker import config as config_module
from chimp_worker.cli import cli
from chimp_worker.commands.config_cmd import example_text
from chimp_worker.config import Settings, load_settings, load_settings_with_sources
from chimp_worker.errors import ConfigError

SECRET = "p%w:d@x/1"  # % must stay literal; : @ / must be quoted in the URL


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CHIMP_* variable of the caller's and no /etc file leak into these tests."""
    import os

    for name in [n for n in os.environ if n.startswith("CHIMP_") or n == "ISPYB_CREDENTIALS"]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", tmp_path / "no-such.toml")


def rabbit_ini(path: Path, **values: str) -> Path:
    values = {"host": "mq1.example,mq2.example", "port": "5673", "username": "chimp"} | values
    values.setdefault("password", SECRET)
    lines = "".join(f"{key} = {value}\n" for key, value in values.items())
    path.write_text(f"[rabbit]\n{lines}")
    return path


def test_workflows_ini_gives_host_port_user_password_and_vhost(tmp_path: Path) -> None:
    ini = rabbit_ini(tmp_path / "rabbitmq.ini", vhost="/zocalo")
    settings = load_settings(amqp_credentials=ini)
    assert settings.amqp_url == "amqp://chimp:p%25w%3Ad%40x%2F1@mq1.example:5673/%2Fzocalo"
    assert settings.masked()["amqp_url"] == "amqp://chimp:***@mq1.example:5673/%2Fzocalo"


def test_the_amqp_url_keeps_its_tls_scheme_when_the_file_gives_the_rest(tmp_path: Path) -> None:
    ini = rabbit_ini(tmp_path / "rabbitmq.ini")
    settings = load_settings(amqp_credentials=ini, amqp_url="amqps://x:y@ignored:5671/%2F")
    assert settings.amqp_url.startswith("amqps://chimp:")
    assert settings.amqp_url.endswith("@mq1.example:5673/%2F")  # vhost defaults to /


def zocalo_yaml(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


ZOCALO = """\
version: 1
graylog:
  plugin: graylog
  host: logs.example
  port: 12201
rabbitmq-live:
  plugin: pika
  host: rabbit-live.example
  port: 5672
  username: chimp_live
  password: "{secret}"
  vhost: /zocalo
rabbitmq-test:
  plugin: pika
  host: rabbit-test.example
  port: 5672
  username: chimp_test
  password: test
  vhost: /
environments:
  live:
    plugins: [graylog, rabbitmq-live]
  test:
    plugins: [rabbitmq-test]
  default: live
"""


def test_zocalo_yaml_uses_the_default_environments_pika_block(tmp_path: Path) -> None:
    site = zocalo_yaml(tmp_path / "site.yaml", ZOCALO.format(secret=SECRET))
    settings = load_settings(amqp_credentials=site)
    assert settings.amqp_url == (
        "amqp://chimp_live:p%25w%3Ad%40x%2F1@rabbit-live.example:5672/%2Fzocalo"
    )
    chosen = load_settings(amqp_credentials=site, amqp_credentials_section="rabbitmq-test")
    assert chosen.amqp_url == "amqp://chimp_test:test@rabbit-test.example:5672/%2F"


def test_zocalo_block_kept_in_a_file_of_its_own_is_followed(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    zocalo_yaml(
        tmp_path / "secrets" / "rabbit.yml",
        "plugin: pika\nhost: rabbit.example\nport: 5672\nusername: chimp\n"
        "password: hush\nvhost: /\n",
    )
    site = zocalo_yaml(
        tmp_path / "site.yml",
        "version: 1\nrabbitmq:\n  secrets/rabbit.yml\nenvironments:\n  live:\n"
        "    transport: rabbitmq\n  default: live\n",
    )
    settings = load_settings(amqp_credentials=site)
    assert settings.amqp_url == "amqp://chimp:hush@rabbit.example:5672/%2F"


def test_zocalo_yaml_with_two_pika_blocks_and_no_default_asks_which(tmp_path: Path) -> None:
    body = ZOCALO.format(secret=SECRET).split("environments:")[0]
    site = zocalo_yaml(tmp_path / "site.yaml", body)
    with pytest.raises(ConfigError, match="amqp_credentials_section") as raised:
        load_settings(amqp_credentials=site)
    assert "rabbitmq-live, rabbitmq-test" in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[rabbit]\nhost = mq\nusername = chimp\n", "lacks password"),
        ("[rabbit]\nhost = mq\nport = five\nusername = u\npassword = {secret}\n", "port"),
        ("password = {secret}\n", "not a valid ini file (MissingSectionHeaderError at line 1)"),
        ("[other]\npassword = {secret}\n", "has no [rabbit] section"),
    ],
)
def test_a_bad_broker_credentials_file_is_one_line_without_its_content(
    tmp_path: Path, content: str, named: str
) -> None:
    ini = tmp_path / "rabbitmq.ini"
    ini.write_text(content.format(secret=SECRET))
    with pytest.raises(ConfigError, match=r"amqp_credentials") as raised:
        load_settings(amqp_credentials=ini)
    assert named in str(raised.value)
    assert SECRET not in str(raised.value)


def test_bad_yaml_names_the_line_but_not_the_text(tmp_path: Path) -> None:
    site = zocalo_yaml(tmp_path / "site.yaml", f"rabbit:\n  plugin: pika\n  password: [{SECRET}\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d") as raised:
        load_settings(amqp_credentials=site)
    assert SECRET not in str(raised.value)


def test_ispyb_credentials_are_read_literally_with_a_percent_in_the_password(
    tmp_path: Path,
) -> None:
    ini = tmp_path / "ispyb.ini"
    ini.write_text(
        "[ispyb_sqlalchemy]\nusername = chimp\npassword = 50%off%(x)s\nhost = db\n"
        "port = 3306\ndatabase = ispyb\n"
    )
    settings = load_settings(ispyb_credentials=ini)
    assert settings.database_url == "mysql+mysqldb://chimp:50%25off%25%28x%29s@db:3306/ispyb"
    from sqlalchemy.engine import make_url

    assert make_url(settings.database_url).password == "50%off%(x)s"


def test_the_default_settings_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "etc" / "chimp-worker.toml"
    default.parent.mkdir()
    default.write_text('work_queue = "from-etc"\nprefetch = 2\n')
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", default)
    monkeypatch.setenv("CHIMP_PREFETCH", "3")
    settings, sources = load_settings_with_sources()
    assert settings.work_queue == "from-etc"
    assert sources["work_queue"] == f"file {default}"
    assert (settings.prefetch, sources["prefetch"]) == (3, "environment CHIMP_PREFETCH")
    other = tmp_path / "other.toml"
    other.write_text('work_queue = "from-option"\n')
    assert load_settings(other).work_queue == "from-option", "--config wins over the default"


def test_config_show_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_file = tmp_path / "chimp.toml"
    settings_file.write_text('events_queue = "file.events"\n')
    ini = rabbit_ini(tmp_path / "rabbitmq.ini")
    monkeypatch.setenv("CHIMP_WORK_QUEUE", "env.work")
    monkeypatch.setenv("CHIMP_AMQP_CREDENTIALS", str(ini))
    result = CliRunner().invoke(
        cli,
        ["config", "show", "--config", str(settings_file), "--database-url", "sqlite:///x.db"],
    )
    assert result.exit_code == 0, result.output
    lines = {line.split(" ", 1)[0]: line for line in result.output.splitlines()}
    assert lines["events_queue"].endswith(f"# file {settings_file}")
    assert lines["work_queue"].endswith("# environment CHIMP_WORK_QUEUE")
    assert lines["database_url"].endswith("# command line")
    assert lines["amqp_url"].endswith(f"# broker credentials file {ini}")
    assert lines["prefetch"].endswith("# default")
    assert "chimp:***@mq1.example:5673" in lines["amqp_url"]
    assert SECRET not in result.output


def test_global_options_work_after_the_subcommand_too(tmp_path: Path) -> None:
    before = CliRunner().invoke(cli, ["--database-url", "sqlite:///a.db", "config", "show"])
    after = CliRunner().invoke(cli, ["config", "show", "--database-url", "sqlite:///a.db"])
    assert before.exit_code == after.exit_code == 0, after.output
    assert before.output == after.output
    assert 'database_url = "sqlite:///a.db"' in after.output


def test_the_shipped_example_lists_every_setting_and_loads_as_written(tmp_path: Path) -> None:
    text = example_text()
    assert CliRunner().invoke(cli, ["config", "example"]).output == text
    for name in Settings.model_fields:
        assert f"# {name} = " in text, f"{name} missing from chimp_worker/examples"
    # Uncommented, every example value is a valid setting (paths need not exist, except the
    # credentials files, which are read).
    uncommented = "\n".join(
        line[2:].split("  #")[0]
        for line in text.splitlines()
        if line.startswith("# ")
        and " = " in line.split("  #")[0]
        and line[2:].split(" = ")[0] in Settings.model_fields
        and not line[2:].startswith(("ispyb_credentials", "amqp_credentials"))
    )
    values = tomllib.loads(uncommented)
    path = tmp_path / "example.toml"
    path.write_text(uncommented)
    settings = load_settings(path)
    assert settings.image_roots == [Path("/dls")]
    assert values["work_queue"] == settings.work_queue == "chimp.work"
    assert json.loads(json.dumps(settings.masked()))["analyser"] == "auto"


def test_loading_settings_writes_nothing_into_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    settings_file = tmp_path / "chimp.toml"
    settings_file.write_text('work_queue = "from-file"\n')
    before = dict(os.environ)
    settings, sources = load_settings_with_sources(settings_file)
    assert dict(os.environ) == before
    assert (settings.work_queue, sources["work_queue"]) == ("from-file", f"file {settings_file}")
    assert Settings().work_queue == "chimp.work", "the file was this load's alone"
    monkeypatch.setenv("CHIMP_CONFIG", str(settings_file))
    settings, sources = load_settings_with_sources()
    assert (settings.work_queue, sources["work_queue"]) == ("from-file", f"file {settings_file}")
    assert Settings().work_queue == "from-file", "Settings() built directly reads CHIMP_CONFIG"


def test_ispyb_credentials_rank_below_the_command_line_and_above_chimp_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = tmp_path / "facility.ini"
    facility.write_text(
        "[ispyb_sqlalchemy]\nusername = f\npassword = p\nhost = fdb\ndatabase = ispyb\n"
    )
    chimp = tmp_path / "chimp.ini"
    chimp.write_text("[ispyb_sqlalchemy]\nusername = c\npassword = p\nhost = cdb\ndatabase = x\n")
    monkeypatch.setenv("ISPYB_CREDENTIALS", str(facility))
    monkeypatch.setenv("CHIMP_ISPYB_CREDENTIALS", str(chimp))
    settings, sources = load_settings_with_sources()
    assert settings.ispyb_credentials == facility
    assert sources["ispyb_credentials"] == "environment ISPYB_CREDENTIALS"
    settings, sources = load_settings_with_sources(ispyb_credentials=chimp)
    assert (settings.ispyb_credentials, sources["ispyb_credentials"]) == (chimp, "command line")
