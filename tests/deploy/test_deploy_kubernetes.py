"""The Kubernetes manifests: schema-valid as rendered, and consistent with the worker itself."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers.deploy import (
    KUBERNETES,
    SCHEMAS,
    STOP_MARGIN_S,
    by_kind,
    check_cli_invocation,
    load_yaml_documents,
    pod_specs,
    render_kustomization,
    unknown_worker_env,
)
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from chimp_worker.config import Settings, load_settings

# Applied by hand, never by `kubectl apply -k` (real credentials and site storage).
EXAMPLES = ("secret.example.yaml", "volumes.example.yaml")
KEDA_SCHEMAS = {
    "ScaledObject": "keda-scaledobject.schema.json",
    "TriggerAuthentication": "keda-triggerauthentication.schema.json",
}
# The oldest release where every field used is GA (CronJob timeZone), and the newest known.
KUBERNETES_VERSIONS = ("1.27.0", latest_version())


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization()


@pytest.fixture(scope="module")
def config(rendered: list[dict[str, Any]]) -> dict[str, str]:
    return by_kind(rendered, "ConfigMap")["data"]


@pytest.fixture(scope="module")
def worker_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def messages_held_per_worker(config: dict[str, str]) -> int:
    """The daemon's work-queue prefetch: ``prefetch * concurrency`` (daemon.py)."""
    settings = Settings(
        prefetch=int(config["CHIMP_PREFETCH"]), concurrency=int(config["CHIMP_CONCURRENCY"])
    )
    return settings.prefetch * settings.concurrency


def secret_example() -> dict[str, str]:
    secrets = {s["metadata"]["name"]: s for s in load_yaml_documents(KUBERNETES / EXAMPLES[0])}
    return secrets["chimp-worker"]["stringData"]


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - listed == set(EXAMPLES)
    assert listed <= on_disk


def test_rendered_objects_are_the_expected_set_in_one_namespace(rendered) -> None:
    kinds = sorted(f"{obj['kind']}/{obj['metadata']['name']}" for obj in rendered)
    assert kinds == [
        "ConfigMap/chimp-worker",
        "CronJob/chimp-replay",
        "Deployment/chimp-worker",
        "Job/chimp-db-upgrade",
        "Namespace/chimp",
        "PodDisruptionBudget/chimp-worker",
        "ScaledObject/chimp-worker",
        "ServiceAccount/chimp-worker",
        "TriggerAuthentication/chimp-rabbitmq-management",
    ]
    namespaced = [obj for obj in rendered if obj["kind"] != "Namespace"]
    assert {obj["metadata"]["namespace"] for obj in namespaced} == {"chimp"}
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "chimp-worker"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(rendered, version) -> None:
    """Strict: an unknown (misspelt) field fails, not only a wrong type. KEDA's custom
    resources have no Kubernetes schema; they get the project's own schema instead."""
    examples = [doc for name in EXAMPLES for doc in load_yaml_documents(KUBERNETES / name)]
    validated, keda = [], []
    for obj in [*rendered, *examples]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            validated.append(obj["kind"])
        except SchemaNotFoundError:
            keda.append(obj["kind"])
    assert sorted(keda) == sorted(KEDA_SCHEMAS)
    assert len(validated) == len(rendered) + len(examples) - len(keda)


def test_keda_objects_validate_against_the_projects_keda_schemas(rendered) -> None:
    for obj in rendered:
        if obj["kind"] in KEDA_SCHEMAS:
            schema = json.loads((SCHEMAS / KEDA_SCHEMAS[obj["kind"]]).read_text())
            jsonschema.validate(obj, schema, cls=jsonschema.Draft202012Validator)


def test_keda_schema_rejects_a_trigger_that_would_count_ready_messages_only(rendered) -> None:
    scaled = json.loads(json.dumps(by_kind(rendered, "ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["protocol"] = "amqps"
    schema = json.loads((SCHEMAS / KEDA_SCHEMAS["ScaledObject"]).read_text())
    with pytest.raises(jsonschema.ValidationError, match="amqps"):
        jsonschema.validate(scaled, schema, cls=jsonschema.Draft202012Validator)


def test_termination_grace_covers_the_workers_grace_period(rendered, config) -> None:
    pod = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    grace = float(config["CHIMP_GRACE_PERIOD_S"])
    assert grace == Settings.model_fields["grace_period_s"].default
    assert pod["terminationGracePeriodSeconds"] == grace + STOP_MARGIN_S


def test_scaledobject_counts_ready_and_unacknowledged_work_on_the_configured_queues(
    rendered, config
) -> None:
    scaled = by_kind(rendered, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == by_kind(rendered, "Deployment")["metadata"]["name"]
    queues = {}
    for trigger in scaled["triggers"]:
        metadata = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        # Only the management API (http) sees unacknowledged messages; QueueLength then
        # counts ready + unacked unless excludeUnacknowledged is "true".
        assert metadata["protocol"] == "http"
        assert metadata["mode"] == "QueueLength"
        assert metadata.get("excludeUnacknowledged", "false") == "false"
        # A busy worker holds prefetch x concurrency work messages: it counts as one replica.
        assert int(metadata["value"]) == messages_held_per_worker(config)
        auth = trigger["authenticationRef"]["name"]
        assert auth == by_kind(rendered, "TriggerAuthentication")["metadata"]["name"]
        queues[trigger["name"]] = metadata["queueName"]
    assert queues == {
        "work-queue": config["CHIMP_WORK_QUEUE"],
        "events-queue": config["CHIMP_EVENTS_QUEUE"],
    }
    assert scaled["minReplicaCount"] >= 1 or "events-queue" in queues
    assert scaled["maxReplicaCount"] > scaled["minReplicaCount"]


def test_replicas_the_scaledobject_asks_for_never_drop_below_the_busy_workers(
    rendered, config
) -> None:
    """KEDA's QueueLength arithmetic: replicas = ceil((ready + unacked) / value)."""
    value = float(by_kind(rendered, "ScaledObject")["spec"]["triggers"][0]["metadata"]["value"])
    for busy_workers in range(1, 9):
        unacked = busy_workers * messages_held_per_worker(config)
        assert math.ceil((0 + unacked) / value) == busy_workers
        assert math.ceil((5 + unacked) / value) > busy_workers


def test_triggerauthentication_reads_the_example_secrets_management_url(rendered) -> None:
    (ref,) = by_kind(rendered, "TriggerAuthentication")["spec"]["secretTargetRef"]
    secrets = {s["metadata"]["name"]: s for s in load_yaml_documents(KUBERNETES / EXAMPLES[0])}
    url = secrets[ref["name"]]["stringData"][ref["key"]]
    assert ref["parameter"] == "host"
    assert url.startswith("http://")
    assert url.endswith(":15672/")


def test_configmap_and_secret_name_only_real_settings_and_load(
    config, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**config, **secret_example()}
    assert unknown_worker_env(list(env)) == []
    for name in [name for name in os.environ if name.startswith("CHIMP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.queue_arguments == "policy"
    assert settings.image_roots == [Path("/data/imaging")]
    assert settings.effective_analyser == "chimp"


def test_liveness_probes_check_the_file_the_worker_touches(worker_container, config) -> None:
    for probe in ("startupProbe", "livenessProbe"):
        command = worker_container[probe]["exec"]["command"]
        assert command == [
            "chimp-worker-alive",
            config["CHIMP_LIVENESS_FILE"],
            str(int(float(config["CHIMP_LIVENESS_TIMEOUT_S"]))),
        ]
    # Model loading happens before the first touch: the startup probe allows 5 minutes.
    startup = worker_container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_liveness_file_is_on_a_writable_volume(worker_container, config) -> None:
    mounts = {m["mountPath"]: m for m in worker_container["volumeMounts"]}
    liveness_dir = str(Path(config["CHIMP_LIVENESS_FILE"]).parent)
    assert not mounts[liveness_dir].get("readOnly", False)
    assert mounts["/models"]["readOnly"] is True
    for root in json.loads(config["CHIMP_IMAGE_ROOTS"]):
        assert mounts[root]["readOnly"] is True
    for setting in (
        "CHIMP_CLASSIFIER_PATH",
        "CHIMP_VMXI_DETECTOR_PATH",
        "CHIMP_XCHEM_DETECTOR_PATH",
    ):
        assert config[setting].startswith("/models/")


def test_torch_threads_match_the_cpu_request(worker_container, config) -> None:
    assert worker_container["resources"]["requests"]["cpu"] == config["CHIMP_TORCH_THREADS"]
    assert worker_container["resources"]["limits"]["memory"] == "4Gi"


def test_every_pod_runs_non_root_read_only_without_privileges(rendered) -> None:
    specs = dict(pod_specs(rendered))
    assert sorted(specs) == [
        "CronJob/chimp-replay",
        "Deployment/chimp-worker",
        "Job/chimp-db-upgrade",
    ]
    for name, pod in specs.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"configMapRef": {"name": "chimp-worker"}} in container["envFrom"], name
            assert {"secretRef": {"name": "chimp-worker"}} in container["envFrom"], name


def test_every_container_runs_a_valid_chimp_worker_command(rendered) -> None:
    commands = {name: pod["containers"][0]["args"] for name, pod in pod_specs(rendered)}
    assert commands == {
        "Deployment/chimp-worker": ["run"],
        "Job/chimp-db-upgrade": ["db", "upgrade"],
        "CronJob/chimp-replay": ["replay"],
    }
    for args in commands.values():
        check_cli_invocation(args)


def test_pod_disruption_budget_selects_the_worker_pods(rendered) -> None:
    pdb = by_kind(rendered, "PodDisruptionBudget")["spec"]
    labels = by_kind(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_replay_cronjob_never_overlaps_itself(rendered) -> None:
    cron = by_kind(rendered, "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["timeZone"] == "Etc/UTC"
