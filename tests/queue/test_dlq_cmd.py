"""``chimp-worker dlq`` against the real RabbitMQ: dead letters made by a real worker (a
malformed event) and by the broker itself (the delivery limit), listed, shown, reinjected with
confirms and purged, with unique queue names per test."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest
from click.testing import CliRunner, Result
from helpers.analysers import PixelStatsAnalyser
from helpers.rabbit import RabbitProbe
from helpers.workers import running_workers

from chimp_worker.broker import HEADER_REASON, BrokerOptions, Publisher
from chimp_worker.broker.dead_letters import HEADER_REINJECTED_FROM, HEADER_REINJECTIONS
from chimp_worker.cli import cli
from chimp_worker.config import Settings
from chimp_worker.events import WorkItem

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def dead_world(
    queue_settings: Settings, ispyb_sqlite_url: str, rabbit: RabbitProbe, tmp_path: Path
) -> Settings:
    """One message dead-lettered by a worker (dlq.events: not JSON) and one by the broker
    after the delivery limit (dlq.work: delivery_limit), the rest of the queues empty."""
    settings = Settings(
        **{
            **queue_settings.model_dump(),
            "database_url": ispyb_sqlite_url,
            "delivery_limit": 1,
            "image_roots": [tmp_path],
        }
    )
    rabbit.declare(settings)
    rabbit.publish_raw(settings.events_queue, b"{not json")
    with running_workers() as start:
        start(settings, PixelStatsAnalyser(), name="dlq-maker", idle_exit_s=1.0).join()
    with Publisher(BrokerOptions.from_settings(settings)) as publisher:
        publisher.publish(WorkItem(containerInspectionId=4711, blSampleImageIds=(1, 2)))
    refuse_until_dead(settings.amqp_url, settings.work_queue)
    assert rabbit.wait_for_count(f"dlq.{settings.events_queue}", 1) == 1
    assert rabbit.wait_for_count(f"dlq.{settings.work_queue}", 1) == 1
    return settings


def refuse_until_dead(amqp_url: str, queue: str) -> None:
    """A consumer that gives the message back until the broker dead-letters it."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    try:
        for _ in range(10):
            method, _properties, _body = channel.basic_get(queue)
            if method is None:
                return
            channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()


def dlq(settings: Settings, *args: str) -> Result:
    env = {
        "CHIMP_AMQP_URL": settings.amqp_url,
        "CHIMP_EVENTS_QUEUE": settings.events_queue,
        "CHIMP_WORK_QUEUE": settings.work_queue,
    }
    return CliRunner().invoke(cli, ["dlq", *args], env=env)


def test_list_counts_each_dead_letter_queue_by_reason(dead_world: Settings) -> None:
    result = dlq(dead_world, "list")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines()[1:])
    assert lines[f"dlq.{dead_world.events_queue}"].split() == ["1", "event_not_json", "1"]
    assert lines[f"dlq.{dead_world.work_queue}"].split() == ["1", "delivery_limit", "1"]
    listed = json.loads(dlq(dead_world, "list", "--format", "json").output)
    assert [row["messages"] for row in listed] == [1, 1]


def test_show_gives_reason_detail_and_source_and_leaves_the_messages_in_order(
    dead_world: Settings, rabbit: RabbitProbe
) -> None:
    # a second work dead letter, after the first
    with Publisher(BrokerOptions.from_settings(dead_world)) as publisher:
        publisher.publish(WorkItem(containerInspectionId=4712, blSampleImageIds=(3,)))
    refuse_until_dead(dead_world.amqp_url, dead_world.work_queue)
    assert rabbit.wait_for_count(f"dlq.{dead_world.work_queue}", 2) == 2

    shown = dlq(dead_world, "show", "--format", "json")
    assert shown.exit_code == 0, shown.output
    letters = json.loads(shown.output)
    by_queue = {(letter["queue"], letter["position"]): letter for letter in letters}
    event = by_queue[(f"dlq.{dead_world.events_queue}", 1)]
    assert event["reason"] == "event_not_json"
    assert "not JSON" in event["detail"]
    assert event["source_queue"] == dead_world.events_queue
    assert event["body"] == "{not json"
    first, second = (by_queue[(f"dlq.{dead_world.work_queue}", n)] for n in (1, 2))
    assert first["reason"] == second["reason"] == "delivery_limit"
    assert first["source_queue"] == dead_world.work_queue
    assert first["body"]["containerInspectionId"] == 4711
    assert second["body"]["containerInspectionId"] == 4712

    text = dlq(dead_world, "show", "events").output
    assert "reason event_not_json" in text
    assert f"from {dead_world.events_queue}" in text
    again = json.loads(dlq(dead_world, "show", "work", "--format", "json").output)
    assert [m["body"]["containerInspectionId"] for m in again] == [4711, 4712], "order kept"
    assert rabbit.count(f"dlq.{dead_world.work_queue}") == 2


def test_reinject_needs_a_choice_and_a_yes_then_sends_the_message_home_confirmed(
    dead_world: Settings, rabbit: RabbitProbe
) -> None:
    unchosen = dlq(dead_world, "reinject", "work")
    assert unchosen.exit_code == 2
    assert "--all, --reason REASON or --message-id ID" in unchosen.output
    unconfirmed = dlq(dead_world, "reinject", "work", "--all")
    assert unconfirmed.exit_code == 2
    assert "add --yes" in unconfirmed.output
    assert rabbit.count(f"dlq.{dead_world.work_queue}") == 1

    result = dlq(dead_world, "reinject", "work", "--reason", "delivery_limit", "--yes")
    assert result.exit_code == 0, result.output
    assert f"reinjected 1: dlq.{dead_world.work_queue} -> {dead_world.work_queue}" in result.output
    assert rabbit.count(f"dlq.{dead_world.work_queue}") == 0
    [home] = rabbit.take_all(dead_world.work_queue)
    assert json.loads(home.body)["containerInspectionId"] == 4711
    assert home.headers[HEADER_REINJECTED_FROM] == f"dlq.{dead_world.work_queue}"
    assert home.headers[HEADER_REINJECTIONS] == 1
    assert "x-death" not in home.headers
    assert HEADER_REASON not in home.headers
    assert rabbit.count(f"dlq.{dead_world.events_queue}") == 1, "the other queue untouched"


def test_reinject_to_a_queue_that_is_gone_keeps_the_message_and_exits_1(
    dead_world: Settings, rabbit: RabbitProbe
) -> None:
    channel = pika.BlockingConnection(pika.URLParameters(dead_world.amqp_url)).channel()
    channel.queue_delete(dead_world.events_queue)
    result = dlq(dead_world, "reinject", "events", "--all", "--yes")
    assert result.exit_code == 1, result.output
    assert "no queue is bound" in result.output
    assert "could not be reinjected" in result.output
    assert rabbit.count(f"dlq.{dead_world.events_queue}") == 1


def test_purge_saves_then_removes_only_the_chosen_messages(
    dead_world: Settings, rabbit: RabbitProbe, tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    result = dlq(dead_world, "purge", "--reason", "event_not_json", "--save", str(saved), "--yes")
    assert result.exit_code == 0, result.output
    assert f"removed 1 from dlq.{dead_world.events_queue}" in result.output
    [file] = saved.glob("*.json")
    record = json.loads(file.read_text())
    assert record["reason"] == "event_not_json"
    assert record["body"] == "{not json"
    assert rabbit.count(f"dlq.{dead_world.events_queue}") == 0
    assert rabbit.count(f"dlq.{dead_world.work_queue}") == 1
    nothing = dlq(dead_world, "purge", "--reason", "event_not_json", "--yes")
    assert nothing.exit_code == 0
    assert "no dead letters match" in nothing.output


def test_a_missing_dead_letter_queue_is_named(queue_settings: Settings) -> None:
    result = dlq(queue_settings, "show", "never-declared")
    assert result.exit_code == 1
    assert "dlq.never-declared" in result.output
    assert "does not exist" in result.output
    listed = dlq(queue_settings, "list", "never-declared")
    assert listed.exit_code == 0
    assert "missing" in listed.output
