"""scripts/check-deploy.sh: passes on the committed files, and each of its checks can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.deploy import DEPLOY, REPO

CHECK_SCRIPT = REPO / "scripts" / "check-deploy.sh"


def run_check_script(deploy_dir: Path, only: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if only:
        env["CHECK_DEPLOY_ONLY"] = only
    return subprocess.run(
        ["bash", str(CHECK_SCRIPT), str(deploy_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_check_deploy_script_passes_on_the_committed_files() -> None:
    result = run_check_script(DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all deploy checks passed" in result.stdout
    assert "exposure level for chimp-worker.service: 1." in result.stdout
    for group in ("systemd:", "container:", "shell scripts:", "kubernetes:", "rabbitmq:"):
        assert f"== {group}" in result.stdout


@pytest.mark.parametrize(
    ("group", "relative_path", "old", "new", "complaint"),
    [
        # systemd-analyze verify only warns (exit 0) about these two: the script still fails.
        (
            "systemd",
            "systemd/chimp-worker.service",
            "ProtectClock=yes",
            "ProtectClok=yes",
            "ProtectClok",
        ),
        ("systemd", "systemd/chimp-worker.service", "Type=notify", "Type=notifyy", "service type"),
        ("systemd", "systemd/chimp-worker.service", "CapabilityBoundingSet=\n", "", "exposure"),
        (
            "systemd",
            "systemd/chimp-worker.service",
            "User=chimp-worker",
            "User=chimp",
            "User=chimp",
        ),
        ("container", "docker/Dockerfile", "USER 10001:10001", "USER root", "DL3002"),
        (
            "container",
            "docker/docker-compose.yml",
            "stop_grace_period:",
            "stop_grace:",
            "stop_grace",
        ),
        (
            "shell",
            "docker/chimp-worker-alive",
            'stat -c %Y -- "$file"',
            "stat -c %Y -- $file",
            "SC2086",
        ),
        (
            "kubernetes",
            "kubernetes/deployment.yaml",
            "terminationGracePeriodSeconds: 150",
            "terminationGracePeriodSecond: 150",
            "terminationGracePeriodSecond",
        ),
        (
            "kubernetes",
            "kubernetes/cronjob-replay.yaml",
            "concurrencyPolicy: Forbid",
            "concurrencyPolicy: 1",
            "concurrencyPolicy",
        ),
        (
            "kubernetes",
            "kubernetes/kustomization.yaml",
            "  - job-db-upgrade.yaml\n",
            "  - job-upgrade.yaml\n",
            "job-upgrade.yaml",
        ),
        (
            "kubernetes",
            "kubernetes/keda-scaledobject.yaml",
            "excludeUnacknowledged",
            "excludeUnacked",
            "excludeUnacked",
        ),
        (
            "rabbitmq",
            "rabbitmq/policies.json",
            '"priority": 10,',
            '"priority": 10',
            "not valid JSON",
        ),
    ],
)
def test_check_deploy_script_fails_on_a_broken_file(
    tmp_path: Path, group: str, relative_path: str, old: str, new: str, complaint: str
) -> None:
    broken = tmp_path / "deploy"
    shutil.copytree(DEPLOY, broken)
    target = broken / relative_path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    result = run_check_script(broken, only=group)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert complaint in output
