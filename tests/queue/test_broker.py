"""Topology, publishing with confirms + mandatory, and connection parameters, on real RabbitMQ."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import pika
import pytest
from helpers.rabbit import RabbitProbe, close_broker_connection

from chimp_worker.broker import (
    BrokerOptions,
    Publisher,
    connection_parameters,
    declare_topology,
    queue_arguments,
)
from chimp_worker.config import Settings
from chimp_worker.errors import ConfigError, TopologyMismatchError, UnroutableMessageError
from chimp_worker.events import InspectionCompleted, WorkItem, results_ready_now

pytestmark = pytest.mark.rabbitmq


def test_connection_parameters_carry_heartbeat_blocked_timeout_and_a_name() -> None:
    settings = Settings(amqp_heartbeat_s=7, amqp_blocked_timeout_s=33.0)
    params = connection_parameters(
        BrokerOptions.from_settings(settings), connection_name="worker-1"
    )
    assert params.heartbeat == 7
    assert params.blocked_connection_timeout == 33.0
    assert params.client_properties["connection_name"] == "worker-1"
    assert params.ssl_options is None


def test_amqps_urls_get_a_verifying_tls_context_for_the_broker_host() -> None:
    settings = Settings(amqp_url="amqps://u:p@broker.example:5671/%2F")
    params = connection_parameters(BrokerOptions.from_settings(settings), connection_name="w")
    assert params.port == 5671
    assert params.ssl_options is not None
    assert params.ssl_options.server_hostname == "broker.example"
    assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert params.ssl_options.context.check_hostname


def test_an_unreadable_tls_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(amqp_url="amqps://h/%2F", amqp_tls_ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="amqp_tls"):
        connection_parameters(BrokerOptions.from_settings(settings), connection_name="w")


def test_declared_queues_are_quorum_with_delivery_limit_and_a_dlq_each(
    queue_settings: Settings, rabbit: RabbitProbe
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(queue_settings.amqp_url))
    try:
        options = BrokerOptions.from_settings(queue_settings)
        declare_topology(connection.channel(), options)
        declare_topology(connection.channel(), options)  # idempotent
    finally:
        connection.close()
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "arguments"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split("\t")[0]: line for line in listing.splitlines()}
    for queue in (queue_settings.events_queue, queue_settings.work_queue):
        assert "quorum" in rows[queue]
        assert "x-delivery-limit" in rows[queue]
        assert f"dlq.{queue}" in rows[queue]
        assert "quorum" in rows[f"dlq.{queue}"]
    assert rabbit.count(queue_settings.results_queue) == 0


def test_a_queue_declared_with_other_arguments_is_a_topology_mismatch_naming_it(
    queue_settings: Settings,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(queue_settings.amqp_url))
    try:
        declare_topology(connection.channel(), BrokerOptions.from_settings(queue_settings))
        changed = queue_settings.model_copy(update={"delivery_limit": 9})
        with pytest.raises(TopologyMismatchError) as caught:
            declare_topology(connection.channel(), BrokerOptions.from_settings(changed))
    finally:
        connection.close()
    assert repr(queue_settings.events_queue) in str(caught.value)
    assert "x-delivery-limit" in str(caught.value)


def test_a_message_redelivered_past_the_delivery_limit_lands_in_its_dlq(
    queue_settings: Settings, rabbit: RabbitProbe
) -> None:
    settings = queue_settings.model_copy(update={"delivery_limit": 1})
    with Publisher(BrokerOptions.from_settings(settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=5))
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    for _ in range(2):  # delivery limit 1: the second requeue dead-letters
        method, _, _ = channel.basic_get(settings.events_queue)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
    connection.close()
    assert rabbit.wait_for_count(f"dlq.{settings.events_queue}", 1) == 1
    [dead] = rabbit.take_all(f"dlq.{settings.events_queue}")
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert dead.json["containerInspectionId"] == 5


def test_the_publisher_routes_each_event_type_to_its_queue(
    queue_settings: Settings, rabbit: RabbitProbe
) -> None:
    with Publisher(BrokerOptions.from_settings(queue_settings)) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=1, barcode="P1"))
        publisher.publish(WorkItem(containerInspectionId=1, blSampleImageIds=(4, 5)))
        publisher.publish(results_ready_now(1, 2, "baseline", "BASELINE_CV"))
    [event] = rabbit.take_all(queue_settings.events_queue)
    [work] = rabbit.take_all(queue_settings.work_queue)
    [ready] = rabbit.take_all(queue_settings.results_queue)
    assert (event.message_type, event.json["barcode"]) == ("inspection.completed", "P1")
    assert (work.message_type, work.json["blSampleImageIds"]) == ("work.item", [4, 5])
    assert (ready.message_type, ready.json["imageCount"]) == ("inspection.results-ready", 2)


def test_an_unroutable_publish_raises_instead_of_vanishing(queue_settings: Settings) -> None:
    with (
        Publisher(BrokerOptions.from_settings(queue_settings)) as publisher,
        pytest.raises(UnroutableMessageError),
    ):
        publisher.publish(
            WorkItem(containerInspectionId=1, blSampleImageIds=(1,)),
            queue=f"{queue_settings.work_queue}.nobody",
        )


def test_the_publisher_reconnects_after_the_broker_closed_its_connection(
    queue_settings: Settings, rabbit: RabbitProbe, queue_prefix: str
) -> None:
    name = f"{queue_prefix}-publisher"
    with Publisher(BrokerOptions.from_settings(queue_settings), connection_name=name) as publisher:
        publisher.publish(InspectionCompleted(containerInspectionId=1))
        assert close_broker_connection(name) == 1
        publisher.publish(InspectionCompleted(containerInspectionId=2))
    ids = [
        message.json["containerInspectionId"]
        for message in rabbit.take_all(queue_settings.events_queue)
    ]
    assert ids == [1, 2]


def test_policy_mode_declares_only_the_queue_type_and_a_broker_policy_dead_letters(
    queue_settings: Settings, rabbit: RabbitProbe, queue_prefix: str
) -> None:
    settings = queue_settings.model_copy(update={"queue_arguments": "policy"})
    options = BrokerOptions.from_settings(settings)
    assert queue_arguments(options, settings.events_queue) == {"x-queue-type": "quorum"}
    policy = f"{queue_prefix}-events"
    definition = {
        "delivery-limit": 0,
        "dead-letter-exchange": "",
        "dead-letter-routing-key": f"dlq.{settings.events_queue}",
    }
    subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            policy,
            f"^{settings.events_queue}$",
            json.dumps(definition),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        with Publisher(BrokerOptions.from_settings(settings)) as publisher:
            publisher.publish(InspectionCompleted(containerInspectionId=8))
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        channel = connection.channel()
        method, _, _ = channel.basic_get(settings.events_queue)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
        connection.close()
        assert rabbit.wait_for_count(f"dlq.{settings.events_queue}", 1) == 1
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "clear_policy", policy], check=True, capture_output=True
        )
