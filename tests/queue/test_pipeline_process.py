"""Pipeline.process on a real database with real image files: rows, failures, completion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.analysers import PixelStatsAnalyser
from helpers.ispyb_rows import Plate, add_plate, snapshot
from helpers.orphans import orphan_sample
from PIL import Image
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import (
    DatabaseUnavailableError,
    InspectionNotVisibleError,
    UnknownImageError,
)
from chimp_worker.images import FilesystemSource
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import ChimpImageResult, ChimpInspection
from chimp_worker.pipeline import ImageProgress, Pipeline

DROPS = 5


def write_jpeg(path: Path, brightness: int) -> None:
    """A small greyscale JPEG of one brightness (JPEG keeps a flat image exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((48, 64), brightness, dtype=np.uint8)).save(path, quality=95)


@pytest.fixture
def factory(ispyb_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(ispyb_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def plate(factory: sessionmaker[Session], tmp_path: Path) -> Plate:
    """A plate whose drop n is a flat image of brightness 40 * n, under tmp_path/dls."""
    plate = add_plate(factory, drops=DROPS)
    for drop in range(1, DROPS + 1):
        write_jpeg(tmp_path / f"dls/imaging/{plate.containerId}/{drop}.jpg", 40 * drop)
    return plate


def make_pipeline(
    factory: sessionmaker[Session], root: Path, analyser: PixelStatsAnalyser | None = None
) -> Pipeline:
    source = FilesystemSource([root / "dls"], path_map={"/dls": str(root / "dls")})
    return Pipeline(factory, source, analyser or PixelStatsAnalyser(), batch_size=2)


def states(factory: sessionmaker[Session], plate: Plate) -> dict[int, tuple[str, str | None]]:
    with factory() as session:
        rows = session.execute(
            select(
                ChimpImageResult.blSampleImageId,
                ChimpImageResult.state,
                ChimpImageResult.failureReason,
            ).where(ChimpImageResult.containerInspectionId == plate.inspectionId)
        )
        return {image_id: (state, reason) for image_id, state, reason in rows}


def crystal_probabilities(factory: sessionmaker[Session], plate: Plate) -> dict[int, float]:
    with factory() as session:
        rows = session.execute(
            select(
                t.BLSampleImageHasAutoScoreClass.blSampleImageId,
                t.BLSampleImageHasAutoScoreClass.probability,
            ).where(t.BLSampleImageHasAutoScoreClass.blSampleImageAutoScoreClassId == 10)
        )
        return {image_id: round(probability, 2) for image_id, probability in rows}


def test_every_image_is_written_and_the_inspection_completes_once(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    pipeline = make_pipeline(factory, tmp_path)
    outcome = pipeline.process(plate.inspectionId)
    assert outcome.written == plate.imageIds
    assert outcome.failed == {}
    assert outcome.completed_inspection
    assert outcome.image_count == DROPS
    # the baseline-schema class 'crystal' (id 10) holds brightness / 255 of each flat image
    expected = {image_id: round(40 * n / 255, 2) for n, image_id in enumerate(plate.imageIds, 1)}
    assert crystal_probabilities(factory, plate) == expected
    with factory() as session:
        inspection = session.get(ChimpInspection, plate.inspectionId)
        assert inspection is not None
        assert (inspection.state, inspection.doneCount, inspection.failedCount) == ("done", 5, 0)


def test_processing_the_same_inspection_again_skips_every_image_and_changes_no_row(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    analyser = PixelStatsAnalyser()
    pipeline = make_pipeline(factory, tmp_path, analyser)
    pipeline.process(plate.inspectionId)
    before = snapshot(factory)
    again = pipeline.process(plate.inspectionId)
    assert again.skipped == plate.imageIds
    assert again.written == ()
    assert not again.completed_inspection
    assert snapshot(factory) == before
    assert set(analyser.calls.values()) == {1}


def test_bad_images_are_recorded_failed_and_the_rest_of_the_plate_goes_on(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    folder = tmp_path / f"dls/imaging/{plate.containerId}"
    (folder / "2.jpg").unlink()
    (folder / "4.jpg").write_bytes((folder / "4.jpg").read_bytes()[:200])
    outcome = make_pipeline(factory, tmp_path).process(plate.inspectionId)
    first, second, third, fourth, fifth = plate.imageIds
    assert outcome.failed == {second: "image_missing", fourth: "image_truncated"}
    assert outcome.written == (first, third, fifth)
    assert outcome.completed_inspection  # done + failed covers every image
    assert states(factory, plate) == {
        first: ("done", None),
        second: ("failed", "image_missing"),
        third: ("done", None),
        fourth: ("failed", "image_truncated"),
        fifth: ("done", None),
    }


def test_a_write_the_database_refuses_fails_that_image_once_and_the_plate_goes_on(
    ispyb_url: str, factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    """An orphaned image (its BLSample deleted with foreign-key checks off): every insert for
    it is refused (1452). One failed image with that reason, not a crash and a redelivery."""
    orphan_sample(ispyb_url, plate.sampleIds[2])
    analyser = PixelStatsAnalyser()
    outcome = make_pipeline(factory, tmp_path, analyser).process(plate.inspectionId)
    first, second, third, fourth, fifth = plate.imageIds
    assert outcome.failed == {third: "db_refused_foreign_key"}
    assert outcome.written == (first, second, fourth, fifth)
    assert outcome.completed_inspection
    assert set(analyser.calls.values()) == {1}  # analysed once, not retried
    with factory() as session:
        record = session.get(ChimpImageResult, third)
        assert record is not None
        assert (record.state, record.failureReason) == ("failed", "db_refused_foreign_key")
        assert "1452" in (record.failureDetail or "") or "FOREIGN KEY" in (
            record.failureDetail or ""
        )
    # Planned again later, it is failed work, not a loop: the same refusal, recorded once.
    again = make_pipeline(factory, tmp_path, analyser).process(plate.inspectionId)
    assert again.failed == {third: "db_refused_foreign_key"}


def test_a_repaired_image_of_a_complete_inspection_completes_it_again_with_new_counts(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    folder = tmp_path / f"dls/imaging/{plate.containerId}"
    saved = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").unlink()
    pipeline = make_pipeline(factory, tmp_path)
    assert pipeline.process(plate.inspectionId).completed_inspection
    (folder / "2.jpg").write_bytes(saved)
    repaired = pipeline.process(plate.inspectionId)
    assert repaired.written == (plate.imageIds[1],)
    assert (repaired.changed, repaired.completed_inspection) == (True, True)
    with factory() as session:
        inspection = session.get(ChimpInspection, plate.inspectionId)
        assert inspection is not None
        assert (inspection.doneCount, inspection.failedCount) == (5, 0)
    again = pipeline.process(plate.inspectionId)
    assert (again.changed, again.completed_inspection) == (False, False)


def test_an_analyser_crash_on_one_image_fails_only_that_image(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    analyser = PixelStatsAnalyser(crash_on=["/3.jpg"])
    outcome = make_pipeline(factory, tmp_path, analyser).process(plate.inspectionId)
    third = plate.imageIds[2]
    assert outcome.failed == {third: "analysis_failed"}
    assert len(outcome.written) == DROPS - 1
    with factory() as session:
        record = session.get(ChimpImageResult, third)
        assert record is not None
        assert "simulated model fault" in (record.failureDetail or "")


def test_a_narrowed_unit_writes_only_its_images_and_the_last_unit_completes(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    pipeline = make_pipeline(factory, tmp_path)
    first = pipeline.process(plate.inspectionId, plate.imageIds[:3])
    assert first.written == plate.imageIds[:3]
    assert not first.completed_inspection
    assert set(states(factory, plate)) == set(plate.imageIds[:3])
    last = pipeline.process(plate.inspectionId, plate.imageIds[3:])
    assert last.written == plate.imageIds[3:]
    assert last.completed_inspection


def test_plan_lists_images_needing_work_and_marks_them_pending(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    pipeline = make_pipeline(factory, tmp_path)
    assert pipeline.plan(plate.inspectionId, plate.imageIds[1:3]) == list(plate.imageIds[1:3])
    assert states(factory, plate) == {i: ("pending", None) for i in plate.imageIds[1:3]}
    pipeline.process(plate.inspectionId, plate.imageIds[:2])
    assert pipeline.plan(plate.inspectionId) == list(plate.imageIds[2:])


def test_progress_reports_each_image_and_raising_from_it_stops_the_unit(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    seen: list[ImageProgress] = []

    class StopRequestedError(Exception):
        pass

    def progress(update: ImageProgress) -> None:
        seen.append(update)
        if update.index == 2:
            raise StopRequestedError

    with pytest.raises(StopRequestedError):
        make_pipeline(factory, tmp_path).process(plate.inspectionId, progress=progress)
    assert [(p.blsample_image_id, p.outcome, p.index, p.total) for p in seen] == [
        (plate.imageIds[0], "done", 1, DROPS),
        (plate.imageIds[1], "done", 2, DROPS),
    ]
    assert set(states(factory, plate)) == set(plate.imageIds[:2])


def test_image_ids_outside_the_inspection_are_refused_before_any_work(
    factory: sessionmaker[Session], plate: Plate, tmp_path: Path
) -> None:
    with pytest.raises(UnknownImageError, match="999999"):
        make_pipeline(factory, tmp_path).process(plate.inspectionId, [plate.imageIds[0], 999999])
    assert states(factory, plate) == {}


def test_an_inspection_not_in_the_database_is_not_visible(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with pytest.raises(InspectionNotVisibleError):
        make_pipeline(factory, tmp_path).process(424242)


def test_a_locked_database_surfaces_as_database_unavailable(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    """Another writer holds SQLite's write lock past the busy timeout: a transient error."""
    setup = make_session_factory(make_engine(ispyb_sqlite_url))
    plate = add_plate(setup, drops=1)
    write_jpeg(tmp_path / f"dls/imaging/{plate.containerId}/1.jpg", 100)
    impatient = make_engine(ispyb_sqlite_url, connect_args={"timeout": 0.2})
    pipeline = make_pipeline(make_session_factory(impatient), tmp_path)
    with setup() as blocker, blocker.begin():
        blocker.execute(text("UPDATE Container SET barcode = barcode"))  # holds the write lock
        with pytest.raises(DatabaseUnavailableError, match="locked"):
            pipeline.process(plate.inspectionId)
    impatient.dispose()
