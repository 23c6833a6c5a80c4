"""Reading the deployment files the way their consumers do: systemd, kubectl, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from chimp_worker.cli import cli
from chimp_worker.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT_FILE = DEPLOY / "systemd" / "chimp-worker.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "chimp-worker.env.example"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
ALIVE_SCRIPT = DEPLOY / "docker" / "chimp-worker-alive"
POLICIES = DEPLOY / "rabbitmq" / "policies.json"
SCHEMAS = Path(__file__).resolve().parents[1] / "deploy" / "schemas"
# The tools come with the test extra into the interpreter's own bin directory.
TOOLS = Path(sys.executable).parent
# Environment variables the worker reads besides CHIMP_<setting>.
EXTRA_WORKER_ENV = {"ISPYB_CREDENTIALS", "CHIMP_CONFIG"}
# Seconds the worker needs after its grace period to close connections and exit.
STOP_MARGIN_S = 30


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]}, keys repeated as written."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line or line.endswith("\\"):
            raise ValueError(f"{path}:{number}: cannot read {raw!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    """The effective (last) value of a key; KeyError when it is not set."""
    values = [value for name, value in unit.get(section, []) if name == key]
    if not values:
        raise KeyError(f"[{section}] {key}= is not set")
    return values[-1]


def timespan_seconds(text: str) -> float:
    """systemd time span ("150", "2min 30s", "90s") in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit]
    return total


def parse_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: KEY=VALUE lines, # and ; comments, a value
    wholly in quotes unquoted, no shell expansion. Anything else is an error here."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or value.endswith("\\"):
            raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def worker_env_names() -> set[str]:
    """Every environment variable name the worker's settings read."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields} | EXTRA_WORKER_ENV


def unknown_worker_env(names: Sequence[str]) -> list[str]:
    """CHIMP_* names no setting reads (a typo there is silently ignored by the worker)."""
    known = worker_env_names()
    return sorted(name for name in names if name.startswith("CHIMP_") and name not in known)


def check_cli_invocation(args: Sequence[str]) -> click.Command:
    """Parse ``chimp-worker ARGS`` as the CLI would, without running it: unknown commands,
    unknown options and bad values raise click's usage errors. Returns the leaf command."""
    command: click.Command = cli
    context = click.Context(cli, info_name="chimp-worker")
    rest = list(args)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(context, rest)
        if sub is None or name is None:
            raise click.UsageError(f"no command in {list(args)}")
        context = click.Context(sub, info_name=name, parent=context)
        command = sub
    command.parse_args(context, rest)
    return command


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [document for document in yaml.safe_load_all(handle) if document]


def render_kustomization(directory: Path = KUBERNETES) -> list[dict[str, Any]]:
    """``kubectl kustomize`` output, parsed: exactly what ``kubectl apply -k`` would send."""
    rendered = subprocess.run(
        [str(TOOLS / "kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def pod_specs(objects: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload: Deployment, Job, CronJob."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if obj["kind"] in ("Deployment", "Job", "CronJob"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec["template"]["spec"]


def by_kind(objects: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of a kind."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
