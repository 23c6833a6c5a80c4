"""By default the weight-free baseline never creates queueable rows in ISPyB."""

from __future__ import annotations

from pathlib import Path

from helpers.plates import plate_settings, small_plate
from sqlalchemy import func, select

from chimp_worker.config import Settings
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import ChimpImageResult
from chimp_worker.wiring import make_pipeline


def test_the_setting_is_off_unless_asked_for() -> None:
    assert Settings().baseline_writes_targets is False


def test_baseline_targets_stay_out_of_the_data_collection_queue(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate = small_plate(ispyb_sqlite_url, tmp_path / "images", wells=4, seed=3)
    settings = plate_settings(ispyb_sqlite_url, tmp_path / "images", baseline_writes_targets=False)
    pipeline = make_pipeline(settings)
    try:
        pipeline.process(plate.latest.containerInspectionId)
    finally:
        pipeline.close()

    factory = make_session_factory(make_engine(ispyb_sqlite_url))
    with factory() as session:
        found = session.scalar(select(func.sum(ChimpImageResult.crystalCount)))
        dispense_ok = session.scalar(
            select(func.count())
            .select_from(ChimpImageResult)
            .where(ChimpImageResult.dispenseStatus == "ok")
        )
        auto_subsamples = session.scalar(select(func.count()).select_from(t.BLSubSample))
        dispensing = session.scalar(select(func.count()).select_from(t.BLSamplePosition))
        scores = session.scalar(select(func.count()).select_from(t.BLSampleImageHasAutoScoreClass))
    assert found > 0  # the baseline did find crystal candidates on this plate...
    assert dispense_ok > 0
    assert (auto_subsamples, dispensing) == (0, 0)  # ...but none is queueable
    assert scores == 8 * 4  # its probabilities, under its own schema, for all 8 drops
