"""What staff see in SynchWeb, on a facility's ISPyB, through processing, staff activity and a
``replay --model-changed``: SynchWeb's own reads (tests/helpers/synchweb.py, written from how
SynchWeb reads a plate) must show what the worker reports, and what staff did must survive.

The plate: 2 wells (4 drops, crystals in each) imaged twice, processed by the weight-free
baseline at an older setting (score threshold 0.3, so its model sha256 differs), then:
a point queued for data collection, a data collection on another point, one drop's dispense
point moved in place, a newer dispense point added by hand on another drop. A second plate's
drop is orphaned (its BLSample deleted with foreign-key checks off): every write for it is
refused, which must fail that image alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.orphans import orphan_sample
from helpers.plates import plate_settings, small_plate
from helpers.synchweb import (
    PlateView,
    add_dispense_point,
    collect_on,
    move_dispense_point,
    plate_view,
    queue_point,
)
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.cli import main
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.queries import DropResult, drop_results, find_plate
from chimp_worker.ispyb.worker_tables import ChimpInspection
from chimp_worker.mock_imager.plate import MockPlate
from chimp_worker.wiring import make_pipeline

pytestmark = pytest.mark.mariadb

CRYSTALS = {1: "crystals", 2: "crystals", 3: "crystals", 4: "crystals"}


@dataclass
class World:
    url: str
    root: Path
    factory: sessionmaker[Session]
    plate: MockPlate
    orphaned: MockPlate

    def view(self) -> PlateView:
        return plate_view(self.factory, self.plate.containerId, self.plate.containerInspectionIds)

    def results(self) -> dict[int, DropResult]:
        found = find_plate(self.factory, barcode=self.plate.barcode)
        return {drop.blSampleId: drop for drop in drop_results(self.factory, found)}

    def rows(self, subsample_id: int) -> tuple[object, ...]:
        """The BLSubSample row and its Position row, every column."""
        with self.factory() as session:
            return tuple(
                session.execute(
                    select(t.BLSubSample.__table__, t.Position.__table__)
                    .join(t.Position, t.Position.positionId == t.BLSubSample.positionId)
                    .where(t.BLSubSample.blSubSampleId == subsample_id)
                ).one()
            )


@pytest.fixture
def world(facility_url: str, tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "images"
    plate = small_plate(
        facility_url, root, barcode="SW-1", wells=2, inspections=2, outcomes=CRYSTALS
    )
    orphaned = small_plate(
        facility_url, root, barcode="SW-2", wells=1, visit="mx23456-2", outcomes=CRYSTALS
    )
    older = plate_settings(facility_url, root, score_threshold=0.3)
    pipeline = make_pipeline(older)
    try:
        for inspection_id in (*plate.containerInspectionIds, *orphaned.containerInspectionIds):
            outcome = pipeline.process(inspection_id)
            assert outcome.failed == {}
    finally:
        pipeline.close()
    engine = make_engine(facility_url)
    yield World(facility_url, root, make_session_factory(engine), plate, orphaned)
    engine.dispose()


def assert_synchweb_shows_what_results_report(view: PlateView, results: Mapping[int, DropResult]):
    """Scores, auto sub-samples on the latest images, and the dispense point, drop by drop."""
    assert view.visible
    assert view.samples == tuple(sorted(results))
    for sample_id, drop in results.items():
        assert drop.state == "done"
        assert view.scores[(drop.blSampleImageId, "BASELINE_CV")] == pytest.approx(
            drop.probabilities, abs=1e-6
        )
        assert view.subsamples.get(sample_id, ()) == tuple(
            (target.blSubSampleId, target.x, target.y) for target in drop.targets
        )
        if drop.dispense is None:
            assert sample_id not in view.dispense
        else:
            assert view.dispense[sample_id] == (
                drop.dispense.blSamplePositionId,
                drop.dispenseX,
                drop.dispenseY,
            )


def test_synchweb_shows_the_results_and_staff_work_survives_a_model_change_replay(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --- after processing: what staff see is what the worker reports -----------------------
    view, results = world.view(), world.results()
    assert set(view.schemas.values()) == {("BASELINE_CV",)}  # per inspection: one schema
    assert_synchweb_shows_what_results_report(view, results)
    assert all(drop.dispenseBy == "worker" for drop in results.values() if drop.dispense)
    targets = [target for drop in results.values() for target in drop.targets]
    assert len(targets) >= 2, "the crystal drops should give the baseline targets"

    # --- staff activity in SynchWeb --------------------------------------------------------
    queued, collected = targets[0].blSubSampleId, targets[-1].blSubSampleId
    queue_point(world.factory, world.plate.containerId, queued)
    collect_on(world.factory, collected)
    moved_sample, added_sample = world.plate.blSampleIds[0], world.plate.blSampleIds[1]
    assert results[moved_sample].dispense is not None
    moved_row = move_dispense_point(world.factory, moved_sample, 21.0, 22.0)
    added_row = add_dispense_point(world.factory, added_sample, 31.0, 32.0)
    staff_rows = {queued: world.rows(queued), collected: world.rows(collected)}
    free = {target.blSubSampleId for target in targets} - set(staff_rows)

    view, results = world.view(), world.results()
    assert view.queued == (queued,)
    assert view.dispense[moved_sample] == (moved_row, 21.0, 22.0)
    assert view.dispense[added_sample] == (added_row, 31.0, 32.0)
    assert (results[moved_sample].dispenseBy, results[added_sample].dispenseBy) == (
        "staff",
        "staff",
    )
    assert_synchweb_shows_what_results_report(view, results)

    # --- new settings ("model"): replay --model-changed, here ----------------------------------
    orphan_sample(world.url, world.orphaned.blSampleIds[0])
    for name, value in {
        "CHIMP_DATABASE_URL": world.url,
        "CHIMP_IMAGE_ROOTS": f'["{world.root.resolve()}"]',
        "CHIMP_ANALYSER": "baseline",
        "CHIMP_BASELINE_WRITES_TARGETS": "true",
    }.items():
        monkeypatch.setenv(name, value)
    main(["replay", "--model-changed", "--local"])
    out = capsys.readouterr().out
    assert "processed 9, unchanged 0, failed 1 (db_refused_foreign_key 1)" in out
    with world.factory() as session:  # no inspection left reopened
        states = session.execute(select(ChimpInspection.state)).scalars().all()
    assert states == ["done"] * 3

    view, results = world.view(), world.results()
    # What staff act on is exactly as it was: still queued, still collected on, still there.
    assert view.queued == (queued,)
    for subsample_id, before in staff_rows.items():
        assert world.rows(subsample_id) == before
    kept = {
        target.blSubSampleId: target.kept for drop in results.values() for target in drop.targets
    }
    assert (kept[queued], kept[collected]) == ("queued by staff", "data collected")
    # The worker's free points of the older setting were replaced, not stacked.
    with world.factory() as session:
        left = session.scalars(
            select(t.BLSubSample.blSubSampleId).where(t.BLSubSample.blSubSampleId.in_(free))
        ).all()
    assert left == []
    # The dispense points staff set are the ones shown, never deleted, never shadowed.
    assert view.dispense[moved_sample] == (moved_row, 21.0, 22.0)
    assert view.dispense[added_sample] == (added_row, 31.0, 32.0)
    with world.factory() as session:
        above = session.execute(
            text(
                "SELECT COUNT(*) FROM BLSamplePosition WHERE blSampleId IN (:a, :b)"
                " AND blSamplePositionId > :top"
            ),
            {"a": moved_sample, "b": added_sample, "top": max(moved_row, added_row)},
        ).scalar()
    assert above == 0
    assert (results[moved_sample].dispenseBy, results[added_sample].dispenseBy) == (
        "staff",
        "staff",
    )
    assert set(view.schemas.values()) == {("BASELINE_CV",)}
    assert_synchweb_shows_what_results_report(view, results)

    # --- the same replay again finds nothing to do; SynchWeb's view stays the same ----------
    main(["replay", "--model-changed", "--local"])
    assert "backlog: 0 of 3 matching inspections need work" in capsys.readouterr().out
    assert world.view() == view
