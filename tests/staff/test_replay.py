"""Replay finds exactly the inspections that need work and brings them to done, once.

Library level, with a counting analyser so "no image processed twice" is a measured fact.
See ``helpers/replay_world.py`` for the backlog these tests start from.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.analysers import PIXEL_STATS_MODEL, PixelStatsAnalyser
from helpers.replay_world import ReplayWorld, build_world, expected_counts, row_counts
from sqlalchemy import select, update

from chimp_worker.errors import ConfigError
from chimp_worker.ispyb.worker_tables import ChimpImageResult
from chimp_worker.replay import (
    FAILED,
    MODEL_CHANGED,
    RULE_CHANGED,
    UNPROCESSED,
    ReplayFilters,
    find_backlog,
    process_backlog,
    reopen_done_inspections,
)

CURRENT = frozenset({PIXEL_STATS_MODEL.sha256})


@pytest.fixture
def world(ispyb_world_url: str, tmp_path: Path) -> ReplayWorld:
    return build_world(ispyb_world_url, tmp_path / "images", PixelStatsAnalyser())


def plan(world: ReplayWorld, **filters: object) -> dict[int, dict[str, tuple[int, ...]]]:
    backlog = find_backlog(world.factory, ReplayFilters(**filters), CURRENT)
    return {item.containerInspectionId: dict(item.work) for item in backlog.inspections}


def test_backlog_holds_unprocessed_failed_and_model_changed_inspections(world):
    a0, a1, a2 = world.a
    failed_image = next(i for i in world.plate_a.inspections[1].images if i.fault)
    assert plan(world) == {
        a1: {FAILED: (failed_image.blSampleImageId,)},
        a2: {UNPROCESSED: world.plate_a.inspections[2].blSampleImageIds},
        world.b: {MODEL_CHANGED: world.plate_b.inspections[0].blSampleImageIds},
    }
    backlog = find_backlog(world.factory, ReplayFilters(), CURRENT)
    (a1_item,) = [i for i in backlog.inspections if i.containerInspectionId == a1]
    assert a1_item.failure_reasons == {"image_corrupt": 1}
    assert (backlog.matched, backlog.images_matched, backlog.image_count) == (4, 14, 7)
    assert a0 not in plan(world)


def test_filters_narrow_the_backlog(world):
    _, a1, a2 = world.a
    assert set(plan(world, failed_only=True)) == {a1}
    assert set(plan(world, model_changed=True)) == {world.b}
    assert set(plan(world, failed_only=True, model_changed=True)) == {a1, world.b}
    assert set(plan(world, barcode="RPL-B")) == {world.b}
    assert set(plan(world, visit="mx1000-1")) == {a1, a2}
    assert set(plan(world, visit="mx999-2")) == {world.b}
    assert set(plan(world, inspection_ids=(a2,))) == {a2}
    assert set(
        plan(world, since=dt.datetime(2024, 1, 1, 6), until=dt.datetime(2024, 1, 1, 18))
    ) == {a1}
    assert set(plan(world, since=dt.datetime(2024, 1, 15))) == {world.b}
    assert plan(world, until=dt.datetime(2023, 12, 31)) == {}


def test_without_model_checksums_done_results_are_never_replayed(world):
    backlog = find_backlog(world.factory, ReplayFilters(), None)
    assert world.b not in {i.containerInspectionId for i in backlog.inspections}


def test_asking_for_an_unknown_inspection_is_reported_not_guessed(world):
    backlog = find_backlog(world.factory, ReplayFilters(inspection_ids=(world.a[0], 999)), CURRENT)
    assert backlog.inspections == ()
    assert backlog.not_completed == (999,)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"visit": "1234"}, "expected a visit such as mx12345-6"),
        (
            {"since": dt.datetime(2024, 2, 1), "until": dt.datetime(2024, 1, 1)},
            "is after --until",
        ),
    ],
)
def test_bad_filters_are_refused_with_a_clear_message(filters, message):
    with pytest.raises(ConfigError, match=message):
        ReplayFilters(**filters)


def test_local_replay_brings_every_inspection_to_done_without_duplicate_rows(world):
    world.repair_corrupt_image()
    analyser = PixelStatsAnalyser()
    pipeline = world.make_pipeline(analyser)
    backlog = find_backlog(world.factory, ReplayFilters(), CURRENT)
    reopen_done_inspections(world.factory, backlog)
    summary = process_backlog(backlog, pipeline, chunk_size=3)
    assert (summary.inspections, summary.images_planned, summary.processed) == (3, 7, 7)
    assert (summary.failed, summary.skipped, summary.completed_inspections) == (Counter(), 7, 3)
    # Exactly the backlog's images were analysed, each once.
    assert sum(analyser.calls.values()) == 7
    assert set(analyser.calls.values()) == {1}
    assert row_counts(world.factory) == expected_counts(images=14, inspections=4, samples=6)
    # Nothing left: a second replay finds no work and changes nothing.
    assert find_backlog(world.factory, ReplayFilters(), CURRENT).inspections == ()
    again = process_backlog(
        find_backlog(world.factory, ReplayFilters(), CURRENT), pipeline, chunk_size=3
    )
    assert (again.processed, again.inspections) == (0, 0)
    assert row_counts(world.factory) == expected_counts(images=14, inspections=4, samples=6)


def test_images_still_broken_stay_failed_with_their_reason(world):
    pipeline = world.make_pipeline(PixelStatsAnalyser())
    summary = process_backlog(
        find_backlog(world.factory, ReplayFilters(failed_only=True), CURRENT),
        pipeline,
        chunk_size=8,
    )
    assert (summary.processed, dict(summary.failed)) == (0, {"image_corrupt": 1})


def test_interrupted_replay_finishes_the_rest_when_started_again(world):
    world.repair_corrupt_image()
    first_run = PixelStatsAnalyser()
    seen: list[int] = []

    def stop_after_three(event):
        seen.append(event.blsample_image_id)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does, at an image boundary

    backlog = find_backlog(world.factory, ReplayFilters(), CURRENT)
    with pytest.raises(KeyboardInterrupt):
        process_backlog(
            backlog, world.make_pipeline(first_run), chunk_size=2, on_image=stop_after_three
        )
    assert row_counts(world.factory)["done"] == 12  # 9 done before (2 by an old model) + 3

    rest = find_backlog(world.factory, ReplayFilters(), CURRENT)
    assert rest.image_count == 4
    assert set(rest.inspections[0].image_ids).isdisjoint(seen)
    second_run = PixelStatsAnalyser()
    summary = process_backlog(rest, world.make_pipeline(second_run), chunk_size=2)
    assert summary.processed == 4
    assert sum(first_run.calls.values()) + sum(second_run.calls.values()) == 7
    assert set(first_run.calls).isdisjoint(second_run.calls)
    assert row_counts(world.factory) == expected_counts(images=14, inspections=4, samples=6)


class PublishedRuleAnalyser(PixelStatsAnalyser):
    """The same results, computed (as it says) by the published target rule."""

    target_rule = "published"

    def analyse(self, images):  # type: ignore[no-untyped-def]
        return [replace(result, target_rule="published") for result in super().analyse(images)]


def mark_as_old_rule(world: ReplayWorld, inspection_id: int) -> tuple[int, ...]:
    """What ``worker_0004`` leaves of a result stored before it: rule 'original', and a digest
    the old code computed (without the rule), which no new result matches."""
    with world.factory.begin() as session:
        session.execute(
            update(ChimpImageResult)
            .where(ChimpImageResult.containerInspectionId == inspection_id)
            .values(targetRule="original", resultDigest="0" * 64)
        )
    (inspection,) = [
        i for i in world.plate_a.inspections if i.containerInspectionId == inspection_id
    ]
    return inspection.blSampleImageIds


def test_results_of_another_target_rule_are_found_and_redone_once(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    world = build_world(ispyb_sqlite_url, tmp_path / "images", PublishedRuleAnalyser())
    a0 = world.a[0]
    old = mark_as_old_rule(world, a0)
    backlog = find_backlog(world.factory, ReplayFilters(), CURRENT, "published")
    work = {item.containerInspectionId: dict(item.work) for item in backlog.inspections}
    assert work[a0] == {RULE_CHANGED: old}
    assert backlog.count(RULE_CHANGED) == 4
    narrowed = find_backlog(world.factory, ReplayFilters(rule_changed=True), CURRENT, "published")
    # Plate B's results came from an old model that named no rule: by itself a rule change
    # too, which --rule-changed alone finds (without it, "model changed" comes first).
    assert dict(narrowed.inspections[0].work) == {RULE_CHANGED: old}
    assert dict(narrowed.inspections[1].work) == {
        RULE_CHANGED: world.plate_b.inspections[0].blSampleImageIds
    }
    assert dict(backlog.inspections[-1].work) == {
        MODEL_CHANGED: world.plate_b.inspections[0].blSampleImageIds
    }
    # Without the rule to compare with (an analyser without one), a0 is up to date.
    assert a0 not in {
        item.containerInspectionId
        for item in find_backlog(world.factory, ReplayFilters(), CURRENT).inspections
    }

    analyser = PublishedRuleAnalyser()
    summary = process_backlog(narrowed, world.make_pipeline(analyser), chunk_size=3)
    assert (summary.processed, summary.unchanged) == (6, 0)
    assert sorted(analyser.calls.values()) == [1] * 6
    with world.factory() as session:
        rules = session.scalars(
            select(ChimpImageResult.targetRule).where(ChimpImageResult.blSampleImageId.in_(old))
        ).all()
    assert rules == ["published"] * 4
    again = find_backlog(world.factory, ReplayFilters(rule_changed=True), CURRENT, "published")
    assert again.inspections == ()
    assert row_counts(world.factory)["done"] == 9  # a0 4, a1 3 (one corrupt), b 2: once each
