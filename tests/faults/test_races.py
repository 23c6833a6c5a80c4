"""Races between workers are not errors, and database errors never put SQL in a log line.

Two workers planning the same event at once both look for the images' rows, find none, and
both insert them: an attack found the second failing with a duplicate key (1062), a spent
delivery and the SQL with 96 parameter rows in its log."""

from __future__ import annotations

import pytest
from helpers.faults import FaultWorld, WorkerPool, mariadb_admin, wait_until
from sqlalchemy.engine import make_url

from chimp_worker.analysis import Analyser

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]

# What the SQL of a failed statement looks like in a log line (statement or bound parameters).
SQL_MARKERS = ("INSERT INTO", "SELECT ", "UPDATE ", "[parameters", "[SQL", "%s, %s")


def sql_in_logs(*workers: object) -> list[str]:
    return [
        line
        for worker in workers
        for line in worker.output().splitlines()  # type: ignore[attr-defined]
        if any(marker in line for marker in SQL_MARKERS)
    ]


def test_two_workers_planning_the_same_event_at_once_both_succeed_without_a_spent_delivery(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    hooks = world.hooks(pending_insert_pause_s=2)
    pair = [workers.start(world.worker_env(), name=f"w{n}", hooks=hooks) for n in (1, 2)]
    for worker in pair:
        worker.wait_for_log("broker_session_open")
    world.publish_inspection(times=2)
    world.hook_events.wait_for("inserting", worker=pair[0])
    world.hook_events.wait_for("inserting", worker=pair[1])  # both looked, both insert
    world.wait_until_complete()
    wait_until(
        lambda: sum(len(w.events("inspection_planned")) for w in pair) == 2, 30, "both planned"
    )
    wait_until(lambda: world.queue_counts()[world.work_queue] == 0, 30, "the work to drain")
    for worker in pair:
        assert worker.alive
        assert worker.stop() == 0
    for worker in pair:
        assert worker.events("message_requeued") == []
        assert worker.events("message_failed_unexpectedly") == []
        assert worker.events("unit_retrying") == []
        assert [r for r in worker.events("message_done") if r["outcome"] != "acked"] == []
        assert [r for r in worker.events("message_done") if r["redelivered"]] == []
    assert [len(w.events("inspection_planned")) for w in pair] == [1, 1]
    assert sql_in_logs(*pair) == []
    world.check(analyser)


def test_a_database_error_no_retry_fixes_is_one_log_line_without_sql_or_parameters(
    world: FaultWorld, workers: WorkerPool
) -> None:
    """A trigger refusing the planning insert (as a revoked grant or a schema change would):
    the event is requeued until the delivery limit, logged as the server's error alone."""
    world.delivery_limit = 1
    database = make_url(world.database_url).database
    trigger = f"`{database}`.refuse_{world.prefix.replace('-', '_')}"
    admin = mariadb_admin()
    admin.cursor().execute(
        f"CREATE TRIGGER {trigger} BEFORE INSERT ON `{database}`.chimp_image_result "
        "FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'"
    )
    try:
        worker = workers.start(world.worker_env(), name="w1")
        world.publish_inspection()
        wait_until(
            lambda: world.probe.count(f"dlq.{world.events_queue}") == 1,
            60,
            "the event dead-lettered by its delivery limit",
        )
        assert worker.alive
        assert worker.stop() == 0
    finally:
        admin.cursor().execute(f"DROP TRIGGER IF EXISTS {trigger}")
        admin.close()
    requeued = worker.events("message_requeued")
    assert [(r["reason"], r["detail"]) for r in requeued] == [
        ("database_error", "MariaDB error 1644: refused by the test")
    ] * 2
    assert worker.events("message_failed_unexpectedly") == []
    assert sql_in_logs(worker) == []
    assert "'pending'" not in worker.output(), "a bound parameter of the insert was logged"
