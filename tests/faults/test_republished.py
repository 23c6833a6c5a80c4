"""A re-published event completes what it changes: an image repaired after its inspection was
complete, then its event published again, updates the inspection's summary and announces
results-ready again. An attack found the image done but the summary still counting it
failed, and no new results-ready."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import FaultWorld, WorkerPool, mariadb_url_for, wait_until
from helpers.ispyb_rows import snapshot

from chimp_worker.analysis import Analyser
from chimp_worker.ispyb.worker_tables import ChimpInspection

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


@pytest.fixture
def world_with_a_missing_image(
    faults_database: str, amqp_url: str, queue_prefix: str, tmp_path: Path, workers: WorkerPool
) -> Iterator[FaultWorld]:
    world = FaultWorld.create(
        mariadb_url_for(faults_database),
        tmp_path / "images",
        amqp_url,
        queue_prefix,
        wells=2,
        faults={1: "missing"},
    )
    world.pool = workers
    yield world
    world.close()


def summary(world: FaultWorld) -> tuple[str, int, int, int]:
    with world.factory() as session:
        row = session.get(ChimpInspection, world.inspection_id)
        assert row is not None
        return row.state, row.imageCount or 0, row.doneCount or 0, row.failedCount or 0


def test_a_repaired_image_republished_updates_the_summary_and_announces_results_again(
    world_with_a_missing_image: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    world = world_with_a_missing_image
    missing = next(i for i in world.plate.latest.images if i.location == 1)
    worker = workers.start(world.worker_env(), name="w1")
    world.publish_inspection()
    world.wait_until_complete()
    wait_until(lambda: world.probe.count(world.results_queue) == 1, 20, "the first announcement")
    world.check(analyser, expected_failures={missing.blSampleImageId: "image_missing"})
    assert summary(world) == ("done", 4, 3, 1)

    # staff restore the file from the imager's store, and publish the event again
    donor = next(i for i in world.plate.latest.images if i.location == 2)
    shutil.copyfile(donor.imageFullPath, missing.imageFullPath)
    world.publish_inspection()
    wait_until(lambda: summary(world) == ("done", 4, 4, 0), 30, "the summary to count it done")
    wait_until(lambda: world.probe.count(world.results_queue) == 1, 20, "a second announcement")
    repaired = snapshot(world.factory)
    [announcement] = world.results_ready()
    assert announcement.json["imageCount"] == 4
    world.check(analyser, results_ready=0)  # every image done now, nothing dead-lettered

    # the same event once more changes nothing and announces nothing
    world.publish_inspection()
    wait_until(lambda: len(worker.events("inspection_planned")) == 3, 30, "the third event")
    wait_until(lambda: world.queue_counts()[world.work_queue] == 0, 30, "the work to drain")
    assert worker.stop() == 0
    assert snapshot(world.factory) == repaired
    assert world.results_ready() == []
