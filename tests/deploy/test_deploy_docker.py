"""The container image files and the compose trial, consistent with the worker and Kubernetes.

No Docker engine runs here, so nothing is built or started: the Dockerfile is linted
(hadolint, in scripts/check-deploy.sh) and read; the compose file is schema-checked there and
read here.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.deploy import (
    ALIVE_SCRIPT,
    COMPOSE_FILE,
    DOCKERFILE,
    KUBERNETES,
    REPO,
    STOP_MARGIN_S,
    check_cli_invocation,
    load_yaml_documents,
    unknown_worker_env,
)
from packaging.requirements import Requirement

from chimp_worker.config import Settings, load_settings

DOCKERIGNORE = DOCKERFILE.with_name("Dockerfile.dockerignore")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arguments)))
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def configmap() -> dict[str, str]:
    return load_yaml_documents(KUBERNETES / "configmap.yaml")[0]["data"]


def test_image_runs_as_the_same_non_root_user_as_the_kubernetes_pods() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    deployment = load_yaml_documents(KUBERNETES / "deployment.yaml")[0]
    pod_context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert users == [f"{pod_context['runAsUser']}:{pod_context['runAsGroup']}"]
    assert pod_context["runAsUser"] != 0


def test_image_checks_health_with_the_liveness_script_and_stops_on_sigterm() -> None:
    stage = dict(final_stage())
    assert stage["HEALTHCHECK"].endswith('CMD ["chimp-worker-alive"]')
    assert "--start-period=300s" in stage["HEALTHCHECK"]
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert stage["ENTRYPOINT"] == '["chimp-worker"]'
    assert stage["CMD"] == '["run"]'
    assert "COPY deploy/docker/chimp-worker-alive /usr/local/bin/chimp-worker-alive" in [
        f"{keyword} {arguments}" for keyword, arguments in final_stage()
    ]


def test_image_environment_names_real_settings_and_matches_kubernetes() -> None:
    env = image_env()
    assert unknown_worker_env(list(env)) == []
    assert env["CHIMP_LIVENESS_FILE"] == configmap()["CHIMP_LIVENESS_FILE"]
    assert env["CHIMP_METRICS_PORT"] == configmap()["CHIMP_METRICS_PORT"]


def test_image_builds_from_a_debian_base_given_as_an_argument_and_installs_the_wheel() -> None:
    instructions = dockerfile_instructions()
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert ("ARG", "BASE_IMAGE=docker.io/library/debian:bookworm-slim") in instructions
    build = " ".join(a for k, a in instructions[: instructions.index(("FROM", froms[1]))])
    assert "pip wheel --no-deps" in build
    assert "rm -rf /opt/chimp-worker/src" in build, "no source tree goes into the image"
    copied = [a for k, a in final_stage() if k == "COPY" and a.startswith("--from=build")]
    assert copied == ["--from=build /opt/chimp-worker /opt/chimp-worker"]


def test_image_mounts_models_and_bakes_none_in() -> None:
    stage = final_stage()
    assert ("VOLUME", '["/models"]') in stage
    copied = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "COPY"]
    assert not [line for line in copied if re.search(r"\.(pt|pth|ckpt|onnx)\b", line)]


def test_torch_pins_in_the_image_satisfy_setup_cfg() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    requirements = {
        Requirement(line).name: Requirement(line)
        for line in parser["options"]["install_requires"].split("\n")
        if line.strip()
    }
    args = dict(
        re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in dockerfile_instructions() if k == "ARG"))
    )
    assert args["TORCH_FLAVOUR"] == "cpu"
    assert requirements["torch"].specifier.contains(args["TORCH_VERSION"])
    assert requirements["torchvision"].specifier.contains(args["TORCHVISION_VERSION"])


def test_dockerignore_lets_through_every_path_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    }
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            sources += arguments.split()[:-1]
    assert sources
    for source in sources:
        assert source.rstrip("/") in allowed, source
        assert (REPO / source).exists(), source


def test_compose_brings_up_broker_database_upgrade_imager_and_two_workers(compose) -> None:
    services = compose["services"]
    assert sorted(services) == ["db-upgrade", "mariadb", "mock-imager", "rabbitmq", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["db-upgrade"]["depends_on"]["mariadb"]["condition"] == "service_healthy"
    for name in ("worker", "mock-imager"):
        depends = services[name]["depends_on"]
        assert depends["db-upgrade"]["condition"] == "service_completed_successfully"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
    build = services["db-upgrade"]["build"]
    assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_workers_get_the_grace_period_and_read_only_images_and_models(compose) -> None:
    worker = compose["services"]["worker"]
    grace = Settings.model_fields["grace_period_s"].default
    assert worker["stop_grace_period"] == f"{int(grace + STOP_MARGIN_S)}s"
    assert "imaging:/data/imaging:ro" in worker["volumes"]
    assert "./models:/models:ro" in worker["volumes"]
    assert (COMPOSE_FILE.parent / "models").is_dir()
    assert "imaging:/data/imaging" in compose["services"]["mock-imager"]["volumes"]


def test_compose_environment_names_real_settings_and_loads(
    compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose["services"]["worker"]["environment"]
    assert unknown_worker_env(list(env)) == []
    for name in [name for name in os.environ if name.startswith("CHIMP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.database_url == "mysql+mysqldb://chimp:chimp@mariadb:3306/ispyb"
    assert settings.image_roots == [Path(json.loads(env["CHIMP_IMAGE_ROOTS"])[0])]
    assert settings.effective_analyser == "baseline"


def test_compose_commands_are_valid_chimp_worker_invocations(compose) -> None:
    services = compose["services"]
    commands = {name: services[name]["command"] for name in ("db-upgrade", "mock-imager", "worker")}
    assert commands["worker"] == ["run"]
    assert commands["db-upgrade"] == ["db", "upgrade"]
    # The plate's completion event goes to the queue the workers consume.
    assert "--publish" in commands["mock-imager"]
    for args in commands.values():
        check_cli_invocation(args)


def run_alive(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ALIVE_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )


def test_liveness_script_accepts_a_fresh_file_and_rejects_a_stale_one(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    alive.touch()
    assert run_alive(str(alive), "60").returncode == 0
    two_minutes_ago = time.time() - 120
    os.utime(alive, (two_minutes_ago, two_minutes_ago))
    stale = run_alive(str(alive), "60")
    assert stale.returncode == 1
    assert re.search(r"is 1(19|2[01])s old \(limit 60s\)", stale.stderr)
    assert run_alive(str(alive), "180").returncode == 0


def test_liveness_script_fails_without_a_file_and_reads_the_workers_setting(tmp_path: Path) -> None:
    missing = run_alive(str(tmp_path / "never-written"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    unset = run_alive()
    assert unset.returncode == 2
    assert "CHIMP_LIVENESS_FILE is not set" in unset.stderr
    (tmp_path / "alive").touch()
    assert run_alive(env={"CHIMP_LIVENESS_FILE": str(tmp_path / "alive")}).returncode == 0
