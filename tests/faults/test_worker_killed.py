"""A worker SIGKILLed (OOM killer, power cut) before and after a commit, and again and again on
the same message; systemd restarts it. Nothing is lost, nothing is written twice, and a
message that kills every worker ends in the dead-letter queue instead of looping."""

from __future__ import annotations

import datetime
import signal

import pytest
from helpers.faults import FaultWorld, WorkerPool, wait_until

from chimp_worker.analysis import Analyser
from chimp_worker.broker import HEADER_REASON
from chimp_worker.ispyb.worker_tables import ChimpImageResult, ChimpInspection

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


def result_row(world: FaultWorld, image_id: int) -> tuple[object, ...]:
    with world.factory() as session:
        row = session.get(ChimpImageResult, image_id)
        assert row is not None
        return (row.state, row.resultDigest, row.attempts, row.updatedAt, row.blSamplePositionId)


def published_at(world: FaultWorld) -> datetime.datetime | None:
    with world.factory() as session:
        row = session.get(ChimpInspection, world.inspection_id)
        assert row is not None
        return row.resultsPublishedAt


def test_sigkill_during_inference_before_any_commit_is_redone_by_the_restarted_worker(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    first = workers.start(world.worker_env(), name="w1", hooks=world.hooks(analyse_pause_s=1.5))
    world.publish_inspection()
    _pid, _, images = world.hook_events.wait_for("analysing", worker=first)
    assert first.kill() == -signal.SIGKILL
    assert not [e for e in world.hook_events.lines() if e[1] == "written"], "killed before a commit"

    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete()
    assert restarted.alive
    assert restarted.stop() == 0
    world.check(analyser)
    redone = [r for r in restarted.events("message_done") if r.get("redelivered")]
    assert redone, "the killed worker's message was redelivered to the restarted one"
    assert len(images.split(",")) == 2


def test_sigkill_after_a_commit_before_the_ack_leaves_the_committed_rows_untouched(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    first = workers.start(
        world.worker_env(),
        name="w1",
        hooks=world.hooks(after_write_pause_s=60, after_write_limit=1),
    )
    world.publish_inspection()
    _, _, committed = world.hook_events.wait_for("written", worker=first)
    assert first.kill() == -signal.SIGKILL
    before = result_row(world, int(committed))
    assert before[0] == "done", "the first image was committed before the kill"

    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete()
    assert restarted.stop() == 0
    world.check(analyser)
    assert result_row(world, int(committed)) == before, "the redelivery rewrote a committed image"
    skipped = restarted.events("image_skipped") + [
        r for r in restarted.events("work_done") if r.get("skipped")
    ]
    assert skipped, "the restarted worker skipped the committed image"


def test_a_message_that_kills_every_worker_is_dead_lettered_by_the_delivery_limit(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    # one work item for the whole plate; delivery limit 2: dead-lettered on the third death
    world.delivery_limit = 2
    env = world.worker_env(images_per_work_item=4)
    world.publish_inspection()
    for attempt in range(3):
        worker = workers.start(env, name=f"doomed-{attempt}", hooks=world.hooks(analyse_pause_s=60))
        world.hook_events.wait_for("analysing", worker=worker)
        worker.kill()
    wait_until(
        lambda: world.probe.count(f"dlq.{world.work_queue}") == 1, 30, "the work item in the DLQ"
    )
    survivor = workers.start(env, name="survivor")
    survivor.wait_for_log("broker_session_open")
    assert world.probe.count(world.work_queue) == 0, "the poison message does not loop"
    [dead] = world.probe.take_all(f"dlq.{world.work_queue}")
    assert dead.message_type == "work.item"
    assert dead.json["blSampleImageIds"] == list(world.image_ids)
    deaths = dead.headers["x-death"]
    assert [(d["reason"], d["queue"]) for d in deaths] == [("delivery_limit", world.work_queue)]
    assert HEADER_REASON not in dead.headers, "the broker dead-lettered it, not the worker"
    assert world.inspection_state() is None, "not completed"
    assert world.settled_images() == 0, "no image has a result or failure yet"

    # An operator fixes the cause and moves the message back: it completes, exactly once.
    world.probe.publish_raw(world.work_queue, dead.body)
    world.wait_until_complete()
    assert survivor.stop() == 0
    world.check(analyser)


def test_sigkill_between_the_completion_commit_and_results_ready_still_announces_it(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    first = workers.start(
        world.worker_env(), name="w1", hooks=world.hooks(after_complete_pause_s=60)
    )
    world.publish_inspection()
    world.hook_events.wait_for("completed", worker=first)
    first.kill()
    assert world.inspection_state() == "done"
    assert published_at(world) is None, "killed before the publish: results-ready still owed"

    restarted = workers.start(world.worker_env(), name="w1-restarted")
    wait_until(lambda: world.probe.count(world.work_queue) == 0, 30, "the redelivery")
    restarted.wait_for_log("message_done")
    assert restarted.stop() == 0
    world.check(analyser)  # exactly one results-ready
    assert published_at(world) is not None, "the redelivery recorded the confirmed publish"
