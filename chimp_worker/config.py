"""Settings: one object, built once in ``main`` and passed down; never read at import time.

Sources, highest priority first: explicit keyword arguments (command-line options),
``CHIMP_*`` environment variables, a TOML file (``--config``, ``CHIMP_CONFIG``, else
``/etc/chimp-worker/chimp-worker.toml`` when it exists), defaults. Two settings come from the
facility's own credentials files instead, read literally (a ``%`` is just a character):

- the database URL from the ISPyB credentials ini named by ``ISPYB_CREDENTIALS`` (section
  ``[ispyb_sqlalchemy]``), turned into a ``mysql+mysqldb://`` URL;
- the broker's host, port, user, password and vhost from ``amqp_credentials``: an ini file with
  a ``[rabbit]`` section (python-workflows) or a zocalo site-configuration YAML (a block with
  ``plugin: pika``).

``load_settings_with_sources`` also says where each value came from (``config show``). It
hands the settings file to pydantic-settings through a context variable: loading settings
writes nothing into the process environment.

Components never take ``Settings`` whole: each takes a frozen slice built once from it with
``from_settings`` (``BrokerOptions``, ``HandlingOptions``, ``ImageOptions``, ``DatabaseOptions``,
``AnalysisOptions``), so what a component depends on is spelled out in its signature.
"""

from __future__ import annotations

import configparser
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from chimp_worker.detector_kinds import DETECTOR_KINDS, configured_model_files, detector_kind
from chimp_worker.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///chimp-worker.sqlite"
DEFAULT_CONFIG_FILE = Path("/etc/chimp-worker/chimp-worker.toml")
ISPYB_CREDENTIALS_SECTION = "ispyb_sqlalchemy"
RABBIT_SECTION = "rabbit"  # python-workflows' PikaTransport configuration file
ZOCALO_PIKA_PLUGIN = "pika"  # a zocalo site-configuration block for the same
_SECRET_FIELDS = ("database_url", "amqp_url", "image_url_template")

# The settings file of the load in progress: ``load_settings_with_sources`` hands its path to
# ``Settings.settings_customise_sources`` here rather than through the process environment.
_SETTINGS_FILE: ContextVar[Path | None] = ContextVar("chimp_settings_file", default=None)


class _FacilityEnvironment(PydanticBaseSettingsSource):
    """``ISPYB_CREDENTIALS``, the facility's own variable (python-ispyb reads it too): it names
    the ISPyB credentials file above any ``CHIMP_*`` variable, below the command line."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the one variable itself

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("ISPYB_CREDENTIALS")
        return {"ispyb_credentials": path} if path else {}


class Settings(BaseSettings):
    """Everything a worker process needs to know; see ``chimp-worker config show``."""

    model_config = SettingsConfigDict(
        env_prefix="CHIMP_", extra="forbid", validate_default=True, frozen=True
    )

    # --- database ---------------------------------------------------------------------------
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of ISPyB (mysql+mysqldb://...) or an SQLite file",
    )
    ispyb_credentials: Path | None = Field(
        None, description="ini file with an [ispyb_sqlalchemy] section; overrides database_url"
    )
    database_connect_args: dict[str, Any] = Field(
        default_factory=dict, description="extra DBAPI connect args, e.g. TLS: {ssl: {ca: ...}}"
    )
    database_retry_attempts: int = Field(5, ge=1, le=50)

    # --- broker -----------------------------------------------------------------------------
    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        description="amqp:// or amqps:// (TLS) URL of RabbitMQ; the vhost / is written %2F",
    )
    amqp_credentials: Path | None = Field(
        None,
        description="the facility's broker credentials: an ini file with a [rabbit] section or "
        "a zocalo YAML (plugin: pika); host, port, username, password and vhost from it "
        "replace amqp_url's (its amqp:// or amqps:// scheme stays)",
    )
    amqp_credentials_section: str | None = Field(
        None, description="which zocalo block to read when the YAML has several pika blocks"
    )
    amqp_heartbeat_s: int = Field(10, ge=1, le=600)
    amqp_blocked_timeout_s: float = Field(60.0, gt=0)
    events_queue: str = "chimp.inspection-completed"
    work_queue: str = "chimp.work"
    results_exchange: str = "chimp.results"
    results_routing_key: str = "inspection.results-ready"
    prefetch: int = Field(1, ge=1, le=100)
    images_per_work_item: int = Field(
        8, ge=1, le=288, description="images per work message; keeps each ack well under a minute"
    )
    inspection_visibility_retries: int = Field(5, ge=0, le=100)
    grace_period_s: float = Field(120.0, gt=0, description="SIGTERM: time to finish the message")
    queue_arguments: Literal["declare", "policy"] = Field(
        "declare",
        description="declare: quorum queues carry delivery limit and dead-lettering as "
        "arguments; policy: only x-queue-type, the rest from a broker policy (docs/operations.md)",
    )
    delivery_limit: int = Field(5, ge=1, le=1000, description="redeliveries before the DLQ")
    results_queue: str = Field(
        "chimp.results-ready", description="bound to results_exchange; empty: declare none"
    )
    retry_initial_wait_s: float = Field(0.5, ge=0, description="first back-off of any retry")
    retry_max_wait_s: float = Field(15.0, ge=0, description="longest back-off of any retry")
    publish_timeout_s: float = Field(30.0, gt=0, description="wait for a publisher confirm")
    amqp_tls_ca_file: Path | None = Field(None, description="CA bundle for amqps://")
    amqp_tls_cert_file: Path | None = Field(None, description="client certificate for amqps://")
    amqp_tls_key_file: Path | None = Field(None, description="client key for amqps://")

    # --- models -----------------------------------------------------------------------------
    analyser: Literal["auto", "chimp", "baseline"] = Field(
        "auto", description="auto: CHiMP models when model files are set, else the baseline"
    )
    classifier_path: Path | None = None
    detector_paths: dict[str, Path] = Field(
        default_factory=dict,
        description="model file per detector kind, e.g. {vmxi: ..., xchem: ...} "
        "(the kinds: chimp_worker/detector_kinds.py, docs/models.md)",
    )
    vmxi_detector_path: Path | None = Field(None, description="alias of detector_paths.vmxi")
    xchem_detector_path: Path | None = Field(None, description="alias of detector_paths.xchem")
    classifier_input_size: int = Field(512, ge=32, le=2048)
    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0)
    baseline_writes_targets: bool = Field(
        False,
        description=(
            "let the weight-free baseline write queueable auto BLSubSample and dispensing rows;"
            " off by default so a heuristic never puts debris in the data-collection queue"
        ),
    )
    clahe_clip_limit: float = Field(2.0, gt=0.0, le=40.0)
    dispense_margin_px: float = Field(0.0, ge=0.0)
    target_rule: Literal["published", "original"] = Field(
        "published",
        description="published: crystal targets and dispense points as the CHiMP tools compute "
        "them (at the 1352 x 1688 model input, rounded half to even); original: on masks "
        "resized to the original image (the worker's rule before 2026-12; docs/models.md)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 is opt-in, never default")
    torch_threads: int = Field(0, ge=0, le=256, description="0: one per available core")
    batch_size: int = Field(4, ge=1, le=64)

    # --- hits (docs/hits.md) ----------------------------------------------------------------
    hit_rule: Literal["combined", "classifier", "detector"] = Field(
        "combined",
        description="how an image is called a crystal hit: both models, or one of them alone",
    )
    hit_thresholds_file: Path | None = Field(
        None,
        description="thresholds per analyser, from `chimp-worker evaluate hits --choose`; "
        "unset: the built-in defaults",
    )

    # --- images -----------------------------------------------------------------------------
    image_roots: list[Path] = Field(
        default_factory=list, description="images may only be read under these directories"
    )
    image_path_map: dict[str, str] = Field(
        default_factory=dict, description="prefix rewrites for imageFullPath, e.g. {/dls: /mnt}"
    )
    image_url_template: str | None = Field(
        None, description="fetch over HTTP(S) instead, e.g. https://imgs/{imageFullPath}"
    )
    image_timeout_s: float = Field(30.0, gt=0)
    image_fetch_retries: int = Field(3, ge=0, le=20)
    image_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    image_max_pixels: int = Field(40_000_000, ge=1024)

    # --- process ----------------------------------------------------------------------------
    concurrency: int = Field(1, ge=1, le=64, description="work items processed at once")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics; 0 disables")
    liveness_file: Path | None = Field(None, description="touched by the I/O loop while healthy")
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/healthz fails when the I/O loop is silent this long"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines, or readable lines when stderr is a terminal"
    )

    # --- reliability: deadlines, work liveness, outages, where metrics listen ----------------
    # (docs/reliability.md and docs/operations.md say what each one changes)
    image_deadline_s: float = Field(
        120.0,
        gt=0,
        description="longest one image's fetch, or its share of a batch's analysis, may take; "
        "then it is abandoned as that image's failure (image_timeout, analysis_timeout)",
    )
    work_stall_timeout_s: float = Field(
        300.0,
        gt=0,
        description="liveness (/healthz, liveness file, systemd watchdog) fails when a message "
        "in hand makes no progress this long beyond the deadline of the step it is in",
    )
    database_outage_hold_s: float = Field(
        600.0,
        ge=0,
        description="a database that does not answer: hold the message in hand (consumers "
        "paused) this long, retrying, before returning it to the queue; 0: return at once",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address /metrics and /healthz listen on; 0.0.0.0 (or ::) to be scraped "
        "from other hosts, e.g. in a container",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, ``ISPYB_CREDENTIALS``, ``CHIMP_*`` variables, then the settings
        file: the one ``load_settings`` resolved, else (``Settings()`` built directly) the
        file ``CHIMP_CONFIG`` names."""
        config_file = _SETTINGS_FILE.get()
        if config_file is None and os.environ.get("CHIMP_CONFIG"):
            config_file = Path(os.environ["CHIMP_CONFIG"])
        sources = [init_settings, _FacilityEnvironment(settings_cls), env_settings]
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("image_url_template")
    @classmethod
    def _template_names_the_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "{imageFullPath}" not in value and "{blSampleImageId}" not in value:
            raise ValueError("must contain {imageFullPath} or {blSampleImageId}")
        if urlsplit(value.split("{", 1)[0]).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        try:
            parts.port  # noqa: B018 -- parsing the port is the check
        except ValueError:
            raise ValueError(
                "must be amqp[s]://user:password@host:port/vhost with a numeric port"
            ) from None
        return value

    @field_validator("detector_paths")
    @classmethod
    def _known_detector_kinds(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            detector_kind(name)  # ValueError naming the known kinds
        return value

    @model_validator(mode="after")
    def _detector_aliases(self) -> Settings:
        """Fold the older flat settings (``vmxi_detector_path``...) into ``detector_paths``,
        and show each configured kind under its alias too, so both names read the same."""
        paths = dict(self.detector_paths)
        for kind in DETECTOR_KINDS.values():
            alias = kind.alias_setting
            value = getattr(self, alias, None) if alias else None
            if value is None:
                continue
            if paths.get(kind.name, value) != value:
                raise ValueError(
                    f"{alias} and detector_paths.{kind.name} name different files; set one"
                )
            paths[kind.name] = value
        paths = {name: paths[name] for name in DETECTOR_KINDS if name in paths}  # their order
        object.__setattr__(self, "detector_paths", paths)
        for kind in DETECTOR_KINDS.values():
            if kind.alias_setting and kind.name in paths:
                object.__setattr__(self, kind.alias_setting, paths[kind.name])
        return self

    @model_validator(mode="after")
    def _credentials_file_wins(self) -> Settings:
        if self.ispyb_credentials is not None:
            url = database_url_from_credentials(self.ispyb_credentials)
            object.__setattr__(self, "database_url", url)
        if self.amqp_credentials is not None:
            url = amqp_url_from_credentials(
                self.amqp_credentials, self.amqp_credentials_section, scheme=self.amqp_scheme
            )
            object.__setattr__(self, "amqp_url", url)
        if not self.database_url.startswith(("sqlite", "mysql", "mariadb", "postgresql")):
            raise ValueError(
                "database_url: expected an SQLAlchemy URL such as "
                "mysql+mysqldb://user:pass@host/ispyb or sqlite:///file.sqlite"
            )
        _check_database_url(self.database_url)
        return self

    @property
    def amqp_scheme(self) -> str:
        return urlsplit(self.amqp_url).scheme

    @property
    def has_model_files(self) -> bool:
        return bool(configured_model_files(self))

    @property
    def effective_analyser(self) -> Literal["chimp", "baseline"]:
        if self.analyser == "auto":
            return "chimp" if self.has_model_files else "baseline"
        return self.analyser

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with every password replaced by ``***``."""
        data = self.model_dump(mode="json")
        for name in _SECRET_FIELDS:
            if data.get(name):
                data[name] = mask_url(data[name])
        if data.get("database_connect_args"):
            data["database_connect_args"] = _mask_mapping(data["database_connect_args"])
        return data


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``***`` (keeps user, host, path), and the value of
    any query parameter named like a secret (``?passwd=``, ``?password=``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(_is_secret_name(key) for key, _ in query):
        masked = [(key, "***" if _is_secret_name(key) else value) for key, value in query]
        url = url.replace(f"?{parts.query}", f"?{urlencode(masked, safe='*')}", 1)
        parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def _is_secret_name(name: str) -> bool:
    return any(word in name.lower() for word in ("pass", "secret", "key", "token"))


def _check_database_url(url: str) -> None:
    """Parse the URL and find its dialect the way the engine will, so a malformed URL stops
    start-up with one message instead of a traceback later. The message never repeats the
    URL: it may hold a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except NoSuchModuleError:
        raise ValueError("database_url: unknown SQLAlchemy dialect or driver") from None
    except (ArgumentError, ValueError):
        raise ValueError(
            "database_url: not a valid SQLAlchemy URL (expected "
            "dialect+driver://user:password@host:port/database, the port a number)"
        ) from None


def _mask_mapping(data: dict[str, Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            masked[key] = _mask_mapping(value)
        elif any(word in key.lower() for word in ("pass", "secret", "key", "token")):
            masked[key] = "***"
        else:
            masked[key] = value
    return masked


def database_url_from_credentials(path: Path) -> str:
    """Build ``mysql+mysqldb://`` from the facility's ``[ispyb_sqlalchemy]`` ini file."""
    section = _ini_section(path, ISPYB_CREDENTIALS_SECTION, "ispyb_credentials")
    missing = [k for k in ("username", "password", "host", "database") if k not in section]
    if missing:
        raise ValueError(f"ispyb_credentials: {path} lacks {', '.join(missing)}")
    port = section.get("port", "3306")
    if not port.isdigit():
        raise ValueError(f"ispyb_credentials: port in {path} must be a number, got {port!r}")
    user = quote(section["username"], safe="")
    password = quote(section["password"], safe="")
    return f"mysql+mysqldb://{user}:{password}@{section['host']}:{port}/{section['database']}"


def amqp_url_from_credentials(path: Path, section: str | None = None, *, scheme: str) -> str:
    """Build an AMQP URL from a broker credentials file in one of the facility's formats.

    ``*.yaml`` / ``*.yml``: a zocalo site configuration (the block named ``section``, else the
    default environment's pika block, else the only pika block) or a file holding one block;
    anything else: an ini file with a ``[rabbit]`` section. Keys: host (a comma-separated list:
    the first), port (5672), username, password, vhost (/).
    """
    if path.suffix in (".yaml", ".yml"):
        values = _zocalo_pika_block(path, section)
    else:
        values = dict(_ini_section(path, RABBIT_SECTION, "amqp_credentials"))
    missing = [key for key in ("host", "username", "password") if not values.get(key)]
    if missing:
        raise ValueError(f"amqp_credentials: {path} lacks {', '.join(missing)}")
    host = str(values["host"]).split(",")[0].strip()
    port = str(values.get("port") or "5672").split(",")[0].strip()
    if not port.isdigit():
        raise ValueError(f"amqp_credentials: port in {path} must be a number, got {port!r}")
    user = quote(str(values["username"]), safe="")
    password = quote(str(values["password"]), safe="")
    vhost = quote(str(values.get("vhost") or "/"), safe="")
    return f"{scheme}://{user}:{password}@{host}:{port}/{vhost}"


def _ini_section(path: Path, name: str, setting: str) -> configparser.SectionProxy:
    """One section of an ini file read literally (no %-interpolation, as python-ispyb and
    workflows read it); a parse error names the line, never its content (it may be a password)."""
    if not path.is_file():
        raise ValueError(f"{setting}: file {path} does not exist")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise ValueError(
            f"{setting}: {path} is not a valid ini file ({type(exc).__name__}{where})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: cannot read {path}: {type(exc).__name__}") from None
    if name not in parser:
        raise ValueError(f"{setting}: {path} has no [{name}] section")
    return parser[name]


def _zocalo_pika_block(path: Path, section: str | None) -> dict[str, Any]:
    """The zocalo configuration block with the broker's connection (``plugin: pika``)."""
    data = _read_yaml(path)
    if data.get("plugin") == ZOCALO_PIKA_PLUGIN:  # a file holding the block alone
        return data
    blocks = {
        name: value
        for name, value in data.items()
        if name not in ("version", "environments", "include")
    }

    def load(name: str) -> dict[str, Any] | None:
        value = blocks.get(name)
        if isinstance(value, str):  # zocalo: a block kept in a file of its own
            value = _read_yaml(path.parent / value)
        if isinstance(value, dict) and value.get("plugin") == ZOCALO_PIKA_PLUGIN:
            return value
        return None

    if section is not None:
        block = load(section)
        if block is None:
            raise ValueError(
                f"amqp_credentials_section: {path} has no block {section!r} with plugin: pika"
            )
        return block
    chosen = [name for name in _default_environment_blocks(data) if load(name) is not None]
    if len(chosen) == 1:
        return load(chosen[0]) or {}
    inline = [name for name, value in blocks.items() if isinstance(value, dict) and load(name)]
    if len(inline) == 1:
        return load(inline[0]) or {}
    found = ", ".join(chosen or inline) or "none"
    raise ValueError(
        f"amqp_credentials: {path} needs amqp_credentials_section to say which block with "
        f"plugin: pika to use (found: {found})"
    )


def _default_environment_blocks(data: dict[str, Any]) -> list[str]:
    """Block names of zocalo's ``default`` environment (following aliases)."""
    environments = data.get("environments") or {}
    environment: Any = environments.get("default")
    for _ in range(10):
        if not isinstance(environment, str):
            break
        environment = environments.get(environment)
    if not isinstance(environment, dict):
        return []
    names: list[str] = []
    for value in environment.values():
        names += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
    return names


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ValueError(f"amqp_credentials: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"amqp_credentials: {path} is not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"amqp_credentials: cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ValueError(f"amqp_credentials: {path} does not hold a YAML mapping")
    return data


def detector_path_overrides(settings: Settings, given: dict[str, Path]) -> dict[str, Any]:
    """Overrides that replace the detector files of the kinds in ``given`` (from the command
    line) and keep the others ``settings`` has, the aliases included so none conflicts."""
    paths = {**settings.detector_paths, **given}
    overrides: dict[str, Any] = {"detector_paths": paths}
    for kind in DETECTOR_KINDS.values():
        if kind.alias_setting:
            overrides[kind.alias_setting] = paths.get(kind.name)
    return overrides


def default_config_file() -> Path | None:
    """The facility-wide settings file, when there is one."""
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate settings; any problem becomes one ``ConfigError`` naming the setting."""
    return load_settings_with_sources(config_file, **overrides)[0]


def load_settings_with_sources(
    config_file: Path | None = None, **overrides: Any
) -> tuple[Settings, dict[str, str]]:
    """Settings, and for each one where its value came from (for ``config show``).

    The settings file is ``config_file``, else the one ``CHIMP_CONFIG`` names, else the
    facility-wide default when it exists; a file named but missing is an error."""
    if config_file is None:
        named = os.environ.get("CHIMP_CONFIG")
        config_file = Path(named) if named else default_config_file()
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file: {config_file} does not exist")
    token = _SETTINGS_FILE.set(config_file)
    try:
        settings = Settings(**overrides)
        file_keys = _toml_keys(config_file) if config_file is not None else set()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable or unparsable TOML file
        raise ConfigError(f"config file: {exc}") from None
    finally:
        _SETTINGS_FILE.reset(token)
    return settings, _sources(settings, config_file, set(overrides), file_keys)


def _toml_keys(path: Path) -> set[str]:
    import tomllib

    with path.open("rb") as handle:
        return set(tomllib.load(handle))


def _sources(
    settings: Settings, config_file: Path | None, given: set[str], file_keys: set[str]
) -> dict[str, str]:
    environment = {name.upper() for name in os.environ}
    sources = {}
    for name in Settings.model_fields:
        variable = f"CHIMP_{name.upper()}"
        if name in given:
            sources[name] = "command line"
        elif name == "ispyb_credentials" and "ISPYB_CREDENTIALS" in environment:
            sources[name] = "environment ISPYB_CREDENTIALS"
        elif variable in environment:
            sources[name] = f"environment {variable}"
        elif name in file_keys:
            sources[name] = f"file {config_file}"
        else:
            sources[name] = "default"
    for kind in DETECTOR_KINDS.values():
        alias = kind.alias_setting
        if alias and sources.get(alias) == "default" and kind.name in settings.detector_paths:
            sources[alias] = f"alias of detector_paths.{kind.name}"
    if settings.ispyb_credentials is not None:
        sources["database_url"] = f"ISPyB credentials file {settings.ispyb_credentials}"
    if settings.amqp_credentials is not None:
        sources["amqp_url"] = f"broker credentials file {settings.amqp_credentials}"
    return sources


def _describe(exc: ValidationError) -> str:
    """One line per bad setting: its env var name, what was expected, what was given."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        env = f"CHIMP_{field.upper()}" if error["loc"] else ""
        given = error.get("input")
        hidden = isinstance(given, dict) or field in _SECRET_FIELDS or not error["loc"]
        shown = "" if hidden else f" (got {given!r})"
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings names them itself
            lines.append(f"invalid settings: {message}")
            continue
        lines.append(f"invalid setting {field} [{env}]: {message}{shown}")
    return "; ".join(lines)
