"""Each drop's time course in chimp_drop_inspection / chimp_drop_course, on SQLite and MariaDB.

Results with exact values go through the real writer (helpers/hit_plates.py says what each
drop holds); inspections are completed the way the worker completes them; the refresh is the
one the pipeline calls.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers.hit_plates import complete, seed_hit_plate
from helpers.ispyb_rows import CLASSIFIER
from helpers.staff import SeededPlate, analysis, fail_image, write_result
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import Detection, ModelRef
from chimp_worker.hits import HitPolicy, HitThresholds
from chimp_worker.ispyb.time_course import new_hits, refresh_plate, refresh_time_course
from chimp_worker.ispyb.worker_tables import ChimpDropCourse, ChimpDropInspection

POLICY = HitPolicy()  # combined rule, default thresholds


@pytest.fixture
def factory(ispyb_url: str):
    from chimp_worker.ispyb.database import make_engine, make_session_factory

    engine = make_engine(ispyb_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def plate(factory: sessionmaker[Session], tmp_path: Path) -> SeededPlate:
    return seed_hit_plate(factory, tmp_path)


def rows(factory: sessionmaker[Session]) -> dict[str, list[tuple[object, ...]]]:
    with factory() as session:
        return {
            table.__tablename__: [
                tuple(getattr(row, c.name) for c in table.__table__.columns)
                for row in session.scalars(select(table).order_by(*table.__table__.primary_key))
            ]
            for table in (ChimpDropInspection, ChimpDropCourse)
        }


def course(factory: sessionmaker[Session], sample_id: int) -> ChimpDropCourse:
    with factory() as session:
        found = session.get(ChimpDropCourse, sample_id)
        assert found is not None
        return found


def point(factory: sessionmaker[Session], sample_id: int, inspection_id: int):
    with factory() as session:
        return session.get(ChimpDropInspection, (sample_id, inspection_id))


def test_completing_inspections_builds_each_drops_time_course(factory, plate) -> None:
    first, second, third = plate.inspection_ids
    sample = plate.sample_ids
    assert [h.blSampleId for h in complete(factory, first).new_hits] == [sample[2]]
    update = complete(factory, second)
    assert [(h.blSampleId, h.well, h.drop, h.inspectionNumber) for h in update.new_hits] == [
        (sample[1], "A1", 1, 2)
    ]
    assert update.new_hits[0].score == pytest.approx(0.75)
    assert (update.new_hits[0].crystalCount, update.new_hits[0].crystalAreaUm2) == (1, 1200.0)
    assert [h.blSampleId for h in complete(factory, third).new_hits] == [sample[4]]

    hit = point(factory, sample[1], second)
    assert (hit.inspectionNumber, hit.pCrystal, hit.crystalCount, hit.crystalAreaPx) == (
        2,
        pytest.approx(0.6),
        1,
        300,
    )
    assert (hit.crystalAreaUm2, hit.hitScore, hit.isHit, hit.hitRule) == (
        1200.0,
        pytest.approx(0.75),
        True,
        "combined",
    )
    drop1 = course(factory, sample[1])
    assert (drop1.firstHitInspection, drop1.firstHitInspectionId, drop1.inspections) == (
        2,
        second,
        3,
    )
    assert (drop1.crystalCount, drop1.crystalAreaUm2, drop1.growthUm2, drop1.growthFactor) == (
        3,
        3600.0,
        2400.0,
        3.0,
    )
    drop2 = course(factory, sample[2])
    assert (drop2.firstHitInspection, drop2.isHit) == (1, True)
    assert point(factory, sample[2], second).isHit is False  # a miss between two hits
    drop3 = course(factory, sample[3])
    assert (drop3.firstHitInspection, drop3.isHit, drop3.crystalCount) == (None, False, 1)
    assert drop3.score == pytest.approx(0.5)
    # the failed image leaves a gap: drop 4 has two points, numbered 1 and 3
    with factory() as session:
        numbers = session.scalars(
            select(ChimpDropInspection.inspectionNumber)
            .where(ChimpDropInspection.blSampleId == sample[4])
            .order_by(ChimpDropInspection.inspectionNumber)
        ).all()
    assert numbers == [1, 3]
    assert course(factory, sample[4]).firstHitInspection == 3
    # ranked by promise: drops that are hits now first
    assert course(factory, sample[1]).promise > course(factory, sample[3]).promise
    assert [h.blSampleId for h in new_hits(factory, second)] == [sample[1]]


def test_a_rerun_leaves_every_row_as_it_was(factory, plate) -> None:
    for inspection_id in plate.inspection_ids:
        complete(factory, inspection_id)
    before = rows(factory)
    assert len(before["chimp_drop_inspection"]) == 11
    assert len(before["chimp_drop_course"]) == 4
    for inspection_id in plate.inspection_ids:
        update = refresh_time_course(factory, inspection_id, POLICY)
        assert update.rows_written == 0
    assert refresh_plate(factory, plate.containerId, POLICY).rows_written == 0
    assert rows(factory) == before  # timestamps included


def test_inspections_completed_out_of_order_are_numbered_by_time(factory, plate) -> None:
    first, second, third = plate.inspection_ids
    sample = plate.sample_ids
    update = complete(factory, second)
    # only the second inspection is done: it is number 2 all the same (the first is Completed)
    assert {h.blSampleId: h.inspectionNumber for h in update.new_hits} == {sample[1]: 2}
    assert course(factory, sample[2]).firstHitInspection is None  # 0.3 at the second
    assert [h.blSampleId for h in complete(factory, first).new_hits] == [sample[2]]
    assert course(factory, sample[2]).firstHitInspection == 1
    assert course(factory, sample[1]).firstHitInspection == 2
    complete(factory, third)
    assert course(factory, sample[1]).latestInspection == 3


def test_new_thresholds_apply_to_the_whole_plate_on_refresh(factory, plate) -> None:
    for inspection_id in plate.inspection_ids:
        complete(factory, inspection_id)
    sample = plate.sample_ids
    lenient = HitPolicy("classifier", {"chimp": HitThresholds(classifier_threshold=0.25)})
    update = refresh_plate(factory, plate.containerId, lenient)
    assert update is not None
    assert update.rows_written > 0
    assert point(factory, sample[2], plate.inspection_ids[1]).isHit is True  # P 0.3 >= 0.25
    assert point(factory, sample[1], plate.inspection_ids[1]).hitRule == "classifier"
    assert course(factory, sample[3]).firstHitInspection is None  # P 0.1 stays a miss


def test_a_result_that_fails_on_replay_leaves_the_time_course(factory, plate) -> None:
    for inspection_id in plate.inspection_ids:
        complete(factory, inspection_id)
    sample, third = plate.sample_ids, plate.inspection_ids[2]
    fail_image(factory, plate.image_ids[(2, 4)], "image_missing")
    refresh_time_course(factory, third, POLICY)
    assert point(factory, sample[4], third) is None
    assert course(factory, sample[4]).firstHitInspection is None
    assert course(factory, sample[4]).inspections == 1


def test_with_two_detectors_only_the_crystal_target_detectors_crystals_count(
    factory, plate
) -> None:
    vmxi = ModelRef("vmxi_detector", "maskrcnn_resnet50_fpn", "c" * 64)
    xchem = ModelRef("xchem_detector", "maskrcnn_resnet50_fpn", "b" * 64)
    result = analysis(0.6, [], models=(CLASSIFIER, vmxi, xchem))
    box = (10.0, 10.0, 30.0, 30.0)
    detections = (
        Detection("crystal", 0.8, box, None, 500, (20, 20), "vmxi_detector"),
        Detection("crystal", 0.95, box, None, 700, (20, 20), "xchem_detector"),
        Detection("crystal", 0.9, box, None, 900, (20, 20), "xchem_detector"),
        *result.detections,
    )
    image_id = plate.image_ids[(0, 1)]
    write_result(factory, image_id, replace(result, detections=detections))
    complete(factory, plate.inspection_ids[0])
    seen = point(factory, plate.sample_ids[1], plate.inspection_ids[0])
    assert (seen.crystalCount, seen.crystalAreaPx, seen.bestCrystalScore) == (1, 500, 0.8)
    assert seen.hitScore == pytest.approx(0.7)  # (0.6 + 0.8) / 2
