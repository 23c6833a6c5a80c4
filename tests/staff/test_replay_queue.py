"""Replay through the real RabbitMQ: work items published with confirms, a daemon does them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.analysers import PIXEL_STATS_MODEL, PixelStatsAnalyser
from helpers.replay_world import build_world, expected_counts, row_counts
from helpers.workers import start_worker

from chimp_worker.analysis import AnalysisOptions
from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.events import WorkItem, decode_event
from chimp_worker.replay import (
    ReplayFilters,
    find_backlog,
    publish_backlog,
    reopen_done_inspections,
)

pytestmark = pytest.mark.rabbitmq
CURRENT = frozenset({PIXEL_STATS_MODEL.sha256})


@pytest.fixture(params=["mariadb", "facility"])
def ispyb_mariadb_url(request: pytest.FixtureRequest) -> str:
    """MariaDB with the core subset, and a facility's full ISPyB."""
    if request.param == "facility":
        return request.getfixturevalue("facility_url")
    from chimp_worker.ispyb.schema import create_all

    url = request.getfixturevalue("mariadb_url")
    create_all(url)
    return url


@pytest.mark.mariadb
def test_queue_replay_brings_every_inspection_to_done_once(
    ispyb_mariadb_url: str, tmp_path: Path, queue_names, rabbit
):
    world = build_world(ispyb_mariadb_url, tmp_path / "images", PixelStatsAnalyser(), **queue_names)
    world.repair_corrupt_image()
    backlog = find_backlog(world.factory, ReplayFilters(), CURRENT)
    reopened = reopen_done_inspections(world.factory, backlog)
    assert sorted(reopened) == sorted([world.a[1], world.b])

    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        summary = publish_backlog(backlog, publisher, chunk_size=2)
        # A restarted replay publishes the same work again before any daemon took it.
        publish_backlog(
            find_backlog(world.factory, ReplayFilters(), CURRENT), publisher, chunk_size=2
        )
    assert (summary.inspections, summary.images_planned, summary.published) == (3, 7, 4)
    queued = rabbit.take_all(world.settings.work_queue)
    assert len(queued) == 8
    items = [decode_event(message.body) for message in queued]
    assert all(isinstance(item, WorkItem) for item in items)
    assert {item.reason for item in items} == {
        "replay-failed",
        "replay-unprocessed",
        "replay-model-changed",
    }
    # put them back for the daemon
    with Publisher(BrokerOptions.from_settings(world.settings)) as publisher:
        for item in items:
            publisher.publish(item)

    analyser = PixelStatsAnalyser()
    worker = start_worker(world.settings, analyser, name="replay-test-worker", idle_exit_s=1.5)
    worker.join(timeout_s=120)
    assert worker.exit_codes == [0]

    assert sum(analyser.calls.values()) == 7  # the duplicate items found nothing left to do
    assert set(analyser.calls.values()) == {1}
    assert row_counts(world.factory) == expected_counts(images=14, inspections=4, samples=6)
    assert rabbit.count(world.settings.work_queue) == 0
    ready = [decode_event(m.body) for m in rabbit.take_all(world.settings.results_queue)]
    assert sorted(event.containerInspectionId for event in ready) == sorted(
        [world.a[1], world.a[2], world.b]
    )
    assert find_backlog(world.factory, ReplayFilters(), CURRENT).inspections == ()


def test_replay_command_publishes_to_the_queue_and_a_daemon_finishes_it(
    ispyb_world_url: str, tmp_path: Path, queue_names, rabbit, monkeypatch, capsys
):
    from helpers.plates import plate_settings

    from chimp_worker.baseline import BaselineAnalyser
    from chimp_worker.cli import main

    root = tmp_path / "images"
    current = BaselineAnalyser(AnalysisOptions.from_settings(plate_settings(ispyb_world_url, root)))
    world = build_world(ispyb_world_url, root, current, **queue_names)
    env = {
        "CHIMP_DATABASE_URL": ispyb_world_url,
        "CHIMP_ANALYSER": "baseline",
        "CHIMP_BASELINE_WRITES_TARGETS": "true",
    }
    env.update({f"CHIMP_{name.upper()}": str(value) for name, value in queue_names.items()})
    env["CHIMP_IMAGE_ROOTS"] = f'["{world.image_root.resolve()}"]'
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    main(["replay", "--barcode", "RPL-B", "--chunk-size", "1"])
    out = capsys.readouterr().out
    assert "summary (queue): inspections 1, images planned 2, processed 0" in out
    assert "work items published 2" in out
    assert rabbit.count(world.settings.work_queue) == 2

    worker = start_worker(world.settings, name="replay-cli-worker", idle_exit_s=1.5)
    worker.join(timeout_s=120)
    assert worker.exit_codes == [0]
    current_sha = frozenset(model.sha256 for model in current.models)
    assert (
        find_backlog(world.factory, ReplayFilters(barcode="RPL-B"), current_sha).inspections == ()
    )
    ready = [decode_event(m.body) for m in rabbit.take_all(world.settings.results_queue)]
    assert [event.containerInspectionId for event in ready] == [world.b]


def test_local_replay_with_announce_publishes_results_ready_once_per_inspection(
    ispyb_world_url: str, tmp_path: Path, queue_names, rabbit, monkeypatch, capsys
):
    from helpers.plates import plate_settings

    from chimp_worker.baseline import BaselineAnalyser
    from chimp_worker.cli import main

    root = tmp_path / "images"
    world = build_world(
        ispyb_world_url,
        root,
        BaselineAnalyser(AnalysisOptions.from_settings(plate_settings(ispyb_world_url, root))),
        **queue_names,
    )
    world.repair_corrupt_image()
    env = {
        "CHIMP_DATABASE_URL": ispyb_world_url,
        "CHIMP_ANALYSER": "baseline",
        "CHIMP_BASELINE_WRITES_TARGETS": "true",
    }
    env.update({f"CHIMP_{name.upper()}": str(value) for name, value in queue_names.items()})
    env["CHIMP_IMAGE_ROOTS"] = f'["{world.image_root.resolve()}"]'
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rabbit_settings = world.settings

    main(["replay", "--local", "--announce"])
    out = capsys.readouterr().out
    assert "inspections completed 3, results-ready published 3" in out
    ready = [decode_event(m.body) for m in rabbit.take_all(rabbit_settings.results_queue)]
    assert sorted(e.containerInspectionId for e in ready) == sorted(
        [world.a[1], world.a[2], world.b]
    )
    assert {e.analyser for e in ready} == {"baseline"}

    main(["replay", "--local", "--announce"])
    assert "results-ready published" not in capsys.readouterr().out
    assert rabbit.take_all(rabbit_settings.results_queue) == []
