"""deploy/rabbitmq/policies.json: the same delivery limit and dead-lettering the worker would
declare itself, imported into the real broker, and doing its job there."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from helpers.deploy import POLICIES
from helpers.rabbit import RabbitProbe

from chimp_worker.broker import BrokerOptions, dead_letter_queue, declare_topology, queue_arguments
from chimp_worker.config import Settings

pytestmark = pytest.mark.rabbitmq


def policies() -> list[dict[str, Any]]:
    return json.loads(POLICIES.read_text())["policies"]


def policy_queue(policy: dict[str, Any]) -> str:
    """The one queue an anchored, escaped pattern such as ``^chimp\\.work$`` matches."""
    match = re.fullmatch(r"\^(.+)\$", policy["pattern"])
    assert match, f"pattern {policy['pattern']!r} must name one queue exactly"
    return match.group(1).replace("\\.", ".")


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_policies_give_each_default_queue_what_declare_mode_would_declare() -> None:
    defaults = Settings()
    by_queue = {policy_queue(policy): policy for policy in policies()}
    assert sorted(by_queue) == sorted([defaults.events_queue, defaults.work_queue])
    for queue, policy in by_queue.items():
        declared = queue_arguments(
            BrokerOptions.from_settings(defaults.model_copy(update={"queue_arguments": "declare"})),
            queue,
        )
        expected = {key.removeprefix("x-"): value for key, value in declared.items()}
        assert expected.pop("queue-type") == "quorum"  # a policy cannot set the queue type
        assert policy["definition"] == expected
        assert policy["definition"]["dead-letter-routing-key"] == dead_letter_queue(queue)
        assert policy["vhost"] == "/"
        # "queues": RabbitMQ 3.10 and 3.11 reject the narrower "quorum_queues".
        assert policy["apply-to"] == "queues"


@pytest.fixture
def policy_settings(amqp_url: str, queue_prefix: str) -> Iterator[Settings]:
    """The policy file imported with rabbitmqctl, renamed onto this test's own queues."""
    defaults = Settings()
    settings = Settings(
        amqp_url=amqp_url,
        queue_arguments="policy",
        events_queue=f"{queue_prefix}.events",
        work_queue=f"{queue_prefix}.work",
        results_exchange=f"{queue_prefix}.results",
        results_queue=f"{queue_prefix}.results-ready",
    )
    renamed = {
        defaults.events_queue: settings.events_queue,
        defaults.work_queue: settings.work_queue,
    }
    definitions = json.loads(POLICIES.read_text())
    for policy in definitions["policies"]:
        queue = renamed[policy_queue(policy)]
        policy["name"] = f"{queue_prefix}-{policy['name']}"
        policy["pattern"] = f"^{re.escape(queue)}$"
        policy["definition"]["dead-letter-routing-key"] = dead_letter_queue(queue)
    test_names = {policy["name"] for policy in definitions["policies"]}
    probe = RabbitProbe(amqp_url)
    try:
        # From standard input, as the README does: Debian's rabbitmqctl runs as the rabbitmq
        # user, who may not be able to read the file.
        rabbitmqctl("import_definitions", stdin=json.dumps(definitions))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the import is asynchronous
            listed = json.loads(rabbitmqctl("list_policies", "--formatter", "json"))
            if test_names <= {policy["name"] for policy in listed}:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"policies {test_names} not listed 30 s after import")
        yield settings
    finally:
        for name in test_names:
            subprocess.run(
                ["rabbitmqctl", "-q", "clear_policy", name], capture_output=True, timeout=60
            )
        probe.delete(settings)
        probe.close()


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection.channel()
    connection.close()


def test_a_message_requeued_past_the_delivery_limit_lands_in_the_dead_letter_queue(
    policy_settings: Settings, channel
) -> None:
    declare_topology(channel, BrokerOptions.from_settings(policy_settings))
    work = policy_settings.work_queue
    channel.basic_publish("", work, b'{"poison": true}', pika.BasicProperties(delivery_mode=2))
    deliveries = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        method, _properties, _body = channel.basic_get(work)
        if method is None:
            if channel.queue_declare(dead_letter_queue(work), passive=True).method.message_count:
                break
            time.sleep(0.05)
            continue
        deliveries += 1
        channel.basic_nack(method.delivery_tag, requeue=True)  # a crash, a restart, a requeue
    # x-delivery-limit N dead-letters a message after N + 1 deliveries.
    assert deliveries == policy_settings.delivery_limit + 1
    method, properties, body = channel.basic_get(dead_letter_queue(work), auto_ack=True)
    assert body == b'{"poison": true}'
    (death,) = properties.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == work


def test_a_rejected_event_lands_in_the_events_dead_letter_queue(
    policy_settings: Settings, channel
) -> None:
    declare_topology(channel, BrokerOptions.from_settings(policy_settings))
    events = policy_settings.events_queue
    channel.basic_publish("", events, b"not json", pika.BasicProperties(delivery_mode=2))
    method = None
    deadline = time.monotonic() + 10
    while method is None and time.monotonic() < deadline:
        method, _properties, _body = channel.basic_get(events)
    assert method is not None
    channel.basic_reject(method.delivery_tag, requeue=False)
    deadline = time.monotonic() + 10
    dead = None
    while dead is None and time.monotonic() < deadline:
        dead, properties, body = channel.basic_get(dead_letter_queue(events), auto_ack=True)
    assert dead is not None
    assert body == b"not json"
    assert properties.headers["x-death"][0]["reason"] == "rejected"
