"""The time course against the mock imager's ground truth: plates imaged four times, every image
analysed by the weight-free baseline through the pipeline the daemon runs.

The mock plate's truth says at which inspection each drop first shows a crystal and how large
its crystals are; the worker's ``chimp_drop_course`` says when it first called the drop a hit
and how its crystal area grew.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.ispyb_rows import snapshot
from helpers.plates import plate_settings, small_plate
from sqlalchemy import select

from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import ChimpDropCourse, ChimpDropInspection
from chimp_worker.mock_imager.plate import MockPlate
from chimp_worker.pipeline import Pipeline
from chimp_worker.wiring import make_pipeline

pytestmark = pytest.mark.slow


def process_plate(url: str, root: Path, seed: int) -> tuple[MockPlate, Pipeline]:
    plate = small_plate(url, root / "images", wells=6, inspections=4, seed=seed)
    pipeline = make_pipeline(plate_settings(url, root / "images"))
    for inspection in plate.inspections:
        pipeline.process(inspection.containerInspectionId)
    return plate, pipeline


def first_hits(url: str, plate: MockPlate) -> dict[int, int | None]:
    """location -> the inspection (1-based) the worker first called the drop a hit (drops
    without a course row are left out)."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            courses = {c.blSampleId: c for c in session.scalars(select(ChimpDropCourse))}
    finally:
        engine.dispose()
    return {
        location: courses[sample].firstHitInspection
        for sample, location in zip(plate.blSampleIds, plate.locations, strict=True)
        if sample in courses
    }


def measured_areas(url: str, plate: MockPlate) -> dict[int, list[int]]:
    """location -> counted crystal area (px) at each inspection, in time order."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(
                select(ChimpDropInspection).order_by(ChimpDropInspection.inspectionNumber)
            ).all()
    finally:
        engine.dispose()
    location = dict(zip(plate.blSampleIds, plate.locations, strict=True))
    areas: dict[int, list[int]] = {}
    for row in rows:
        areas.setdefault(location[row.blSampleId], []).append(row.crystalAreaPx)
    return areas


def true_areas(plate: MockPlate, location: int) -> list[int]:
    return [
        sum(c.area for c in image.truth.crystals)
        for inspection in plate.inspections
        for image in inspection.images
        if image.location == location
    ]


def test_first_hits_land_where_the_truth_first_shows_a_crystal(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate, pipeline = process_plate(ispyb_sqlite_url, tmp_path, seed=1)
    truth = {location: plate.first_crystal_inspection(location) for location in plate.locations}
    # the plate has drops that nucleate at the first and at the last inspection, and clear ones
    assert truth == {**dict.fromkeys(range(1, 13), None), 8: 1, 9: 4, 12: 1}
    assert first_hits(ispyb_sqlite_url, plate) == truth
    # crystals grow at every step in the truth: the measured area grows with them
    areas = measured_areas(ispyb_sqlite_url, plate)
    for location in (8, 12):
        assert true_areas(plate, location) == sorted(true_areas(plate, location))
        assert areas[location] == sorted(areas[location])
        assert areas[location][0] > 0
    assert areas[12] == [129, 240, 384, 790]

    # a re-run of every inspection leaves every row as it was (results and time course), and
    # each inspection's new hits are the drops the truth first shows a crystal at
    before = snapshot(pipeline.session_factory)
    location_of = dict(zip(plate.blSampleIds, plate.locations, strict=True))
    for inspection in plate.inspections:
        pipeline.process(inspection.containerInspectionId)
        hits = pipeline.update_time_course(inspection.containerInspectionId)
        assert {location_of[hit.blSampleId] for hit in hits} == {
            location for location, first in truth.items() if first == inspection.index + 1
        }
    assert snapshot(pipeline.session_factory) == before
    pipeline.close()


def test_where_the_baseline_misses_the_truth_it_is_over_detection(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate, pipeline = process_plate(ispyb_sqlite_url, tmp_path, seed=2)
    pipeline.close()
    truth = {location: plate.first_crystal_inspection(location) for location in plate.locations}
    found = first_hits(ispyb_sqlite_url, plate)
    wrong = {location for location in plate.locations if found[location] != truth[location]}
    assert sum(found[loc] == truth[loc] for loc in plate.locations) == 10  # of 12
    # the two misses: clear drops where a fixed piece of debris is called a crystal from the
    # first inspection on (the same area every time), never a late or early true crystal
    assert wrong == {4, 7}
    areas = measured_areas(ispyb_sqlite_url, plate)
    for location in wrong:
        assert (truth[location], found[location]) == (None, 1)
        assert len(set(areas[location])) == 1
    # growth follows the truth: at 11 of the 13 steps where the true area grows
    steps = agree = 0
    for location in plate.locations:
        first = truth[location]
        if first is None:
            continue
        true, seen = true_areas(plate, location), areas[location]
        for a, b in zip(range(first - 1, 4), range(first, 4), strict=False):
            if true[b] >= true[a] and seen[a] > 0:
                steps += 1
                agree += seen[b] >= seen[a]
    assert (agree, steps) == (11, 13)


def test_a_time_course_that_fails_after_completion_is_caught_up_before_announcing(
    ispyb_sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chimp_worker.errors import DatabaseUnavailableError
    from chimp_worker.ispyb import time_course

    plate = small_plate(
        ispyb_sqlite_url, tmp_path / "images", wells=1, outcomes={1: "crystals", 2: "clear"}
    )
    pipeline = make_pipeline(plate_settings(ispyb_sqlite_url, tmp_path / "images"))
    real = time_course.refresh_time_course

    def lost_connection(*args: object, **kwargs: object) -> object:
        raise DatabaseUnavailableError("MariaDB error 2013 (lost connection during query)")

    monkeypatch.setattr(time_course, "refresh_time_course", lost_connection)
    outcome = pipeline.process(plate.latest.containerInspectionId)
    assert outcome.completed_inspection  # the images and the completion stand
    assert outcome.new_hits == ()
    assert first_hits(ispyb_sqlite_url, plate) == {}  # no course written
    monkeypatch.setattr(time_course, "refresh_time_course", real)
    event = pipeline.results_ready(plate.latest.containerInspectionId, outcome.image_count)
    found = first_hits(ispyb_sqlite_url, plate)
    assert set(found) == {1, 2}  # caught up: every drop has its course now
    assert found[1] == 1  # the crystal drop is a hit at the (only) inspection
    assert {int(hit.location) for hit in event.newHits} == {
        location for location, first in found.items() if first == 1
    }
    pipeline.close()
