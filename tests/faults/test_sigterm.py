"""SIGTERM during inference (systemd stop, a Kubernetes rollout): the worker finishes the
message in hand within the grace period, or returns it to the queue, and exits 0 either way."""

from __future__ import annotations

import signal
import time

import pytest
from helpers.faults import FaultWorld, WorkerPool

from chimp_worker.analysis import Analyser

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


def test_sigterm_during_inference_finishes_the_message_in_hand_then_exits_0(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    worker = workers.start(
        world.worker_env(grace_period_s=30), name="w1", hooks=world.hooks(analyse_pause_s=2)
    )
    world.publish_inspection()
    _, _, sources = world.hook_events.wait_for("analysing", worker=worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    written = [int(d) for pid, e, d in world.hook_events.lines() if e == "written"]
    in_hand = [world.plate.image(i).imageFullPath for i in written]
    assert sorted(in_hand) == sorted(sources.split(",")), "the work item in hand was finished"
    assert [r["outcome"] for r in worker.events("message_done")][-1] == "acked"
    assert world.probe.count(world.work_queue) == 1, "the unstarted work item went back"
    assert worker.events("worker_stopped")

    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete()
    assert restarted.stop() == 0
    world.check(analyser)


def test_sigterm_past_the_grace_period_requeues_the_message_and_exits_0_at_once(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    worker = workers.start(
        world.worker_env(grace_period_s=1), name="w1", hooks=world.hooks(analyse_pause_s=60)
    )
    world.publish_inspection()
    world.hook_events.wait_for("analysing", worker=worker)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - started < 15, "exits after the grace period, not the inference"
    assert worker.events("grace_expired_requeueing")
    assert not [e for e in world.hook_events.lines() if e[1] == "written"]
    assert world.settled_images() == 0

    restarted = workers.start(world.worker_env(), name="w1-restarted")
    world.wait_until_complete()
    assert restarted.stop() == 0
    world.check(analyser)
    assert [r for r in restarted.events("message_done") if r.get("redelivered")]
