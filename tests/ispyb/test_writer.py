"""The result writer on SQLite and MariaDB: idempotent, replaces only auto rows, maps by name."""

from __future__ import annotations

import pytest
from helpers.ispyb_rows import Plate, make_analysis, snapshot
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import BASELINE_SCHEMA
from chimp_worker.errors import AnalysisError, MissingScoreClassError, UnknownImageError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpDetection, ChimpImageModel, ChimpImageResult
from chimp_worker.ispyb.writer import record_image_failure, write_image_result

# Seeded class ids (ISPyB 5.x seed rows): CHIMP 5 clear, 6 crystal, 7 precipitant, 8 other;
# the baseline's schema 9-12 in the same order.
CHIMP_IDS = {"clear": 5, "crystal": 6, "precipitant": 7, "other": 8}
BASELINE_IDS = {"clear": 9, "crystal": 10, "precipitant": 11, "other": 12}


def probabilities_of(factory: sessionmaker[Session], image_id: int) -> dict[int, float]:
    with factory() as session:
        rows = session.execute(
            select(
                t.BLSampleImageHasAutoScoreClass.blSampleImageAutoScoreClassId,
                t.BLSampleImageHasAutoScoreClass.probability,
            ).where(t.BLSampleImageHasAutoScoreClass.blSampleImageId == image_id)
        ).all()
    return {class_id: pytest.approx(p) for class_id, p in rows}


def auto_points(factory: sessionmaker[Session], image_id: int) -> list[tuple[float, float]]:
    with factory() as session:
        return sorted(
            session.execute(
                select(t.Position.posX, t.Position.posY)
                .join(t.BLSubSample, t.BLSubSample.positionId == t.Position.positionId)
                .where(t.BLSubSample.blSampleImageId == image_id, t.BLSubSample.source == "auto")
            ).all()
        )


def test_same_result_twice_leaves_identical_rows(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    image_id = plate.imageIds[0]
    first = write_image_result(factory, image_id, make_analysis())
    before = snapshot(factory)
    # A redelivered message: same result, other timings.
    second = write_image_result(factory, image_id, make_analysis(timings={"model": 999.0}))
    assert first.changed
    assert not second.changed
    assert snapshot(factory) == before
    assert len(before["BLSubSample"]) == 2
    assert len(before["Position"]) == 2
    assert len(before["BLSamplePosition"]) == 1
    assert len(before["chimp_detection"]) == 3
    assert probabilities_of(factory, image_id) == {5: 0.1, 6: 0.7, 7: 0.15, 8: 0.05}


def test_new_result_replaces_auto_rows_and_keeps_manual_ones(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    image_id, sample_id = plate.imageIds[0], plate.sampleIds[0]
    with factory.begin() as session:
        manual_position = t.Position(posX=7.0, posY=8.0)
        session.add(manual_position)
        session.flush()
        manual = t.BLSubSample(
            blSampleId=sample_id,
            blSampleImageId=image_id,
            positionId=manual_position.positionId,
            source="manual",
            type="poi",
            comments="picked by hand",
        )
        session.add(manual)
    manual_before = (manual.blSubSampleId, manual_position.positionId)

    first = write_image_result(factory, image_id, make_analysis())
    second = write_image_result(
        factory,
        image_id,
        make_analysis(targets=[(250, 20)], dispense=(150, 90), probabilities={"clear": 1.0}),
    )

    assert len(first.blSubSampleIds) == 2
    assert second.changed
    assert len(second.blSubSampleIds) == 1
    assert auto_points(factory, image_id) == [(250.0, 20.0)]
    with factory() as session:
        kept = session.get(t.BLSubSample, manual_before[0])
        assert kept is not None
        assert kept.comments == "picked by hand"
        assert (kept.source, kept.positionId) == ("manual", manual_before[1])
        # No orphan Position: every row is referenced by exactly one sub-sample.
        positions = set(session.scalars(select(t.Position.positionId)))
        referenced = set(session.scalars(select(t.BLSubSample.positionId)))
        assert positions == referenced
        assert len(positions) == 2
        dispensing = session.execute(
            select(t.BLSamplePosition.posX, t.BLSamplePosition.posY).where(
                t.BLSamplePosition.blSampleId == sample_id
            )
        ).all()
        assert dispensing == [(150.0, 90.0)]
        detections = session.scalars(
            select(ChimpDetection).where(ChimpDetection.blSampleImageId == image_id)
        ).all()
        assert [(d.label, d.centroidX, d.centroidY) for d in detections] == [
            ("crystal", 250, 20),
            ("drop", 155, 130),
        ]
        assert detections[0].blSubSampleId == second.blSubSampleIds[0]
        record = session.get(ChimpImageResult, image_id)
        assert record is not None
        assert (record.state, record.topClass, record.crystalCount, record.attempts) == (
            "done",
            "clear",
            1,
            2,
        )
    # Classes missing from the new result are removed, not left stale.
    assert probabilities_of(factory, image_id) == {5: 1.0}


def test_no_dispense_point_removes_the_earlier_one(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    image_id = plate.imageIds[1]
    write_image_result(factory, image_id, make_analysis())
    write_image_result(factory, image_id, make_analysis(dispense=None))
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(t.BLSamplePosition)) == 0
        record = session.get(ChimpImageResult, image_id)
        assert record is not None
        assert (record.dispenseStatus, record.dispenseX, record.blSamplePositionId) == (
            "no drop",
            None,
            None,
        )


def test_shuffled_probabilities_land_on_the_right_classes(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    shuffled = {"precipitate": 0.2, "other": 0.04, "clear": 0.06, "crystals": 0.7}
    write_image_result(factory, plate.imageIds[0], make_analysis(probabilities=shuffled))
    assert probabilities_of(factory, plate.imageIds[0]) == {
        CHIMP_IDS["crystal"]: 0.7,
        CHIMP_IDS["clear"]: 0.06,
        CHIMP_IDS["precipitant"]: 0.2,
        CHIMP_IDS["other"]: 0.04,
    }


def test_baseline_writes_under_its_own_schema_never_chimp(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    baseline = make_analysis(
        schema=BASELINE_SCHEMA,
        analyser="baseline",
        probabilities={"crystals": 0.6, "clear": 0.4},
        models=(),
    )
    write_image_result(factory, plate.imageIds[2], baseline)
    assert probabilities_of(factory, plate.imageIds[2]) == {
        BASELINE_IDS["crystal"]: 0.6,
        BASELINE_IDS["clear"]: 0.4,
    }
    with factory() as session:
        record = session.get(ChimpImageResult, plate.imageIds[2])
        assert record is not None
        assert (record.analyser, record.schemaName) == (
            "baseline",
            BASELINE_SCHEMA,
        )


def test_model_checksums_are_recorded_per_role(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    write_image_result(factory, plate.imageIds[0], make_analysis())
    with factory() as session:
        rows = session.execute(
            select(ChimpImageModel.role, ChimpImageModel.modelName, ChimpImageModel.sha256)
            .where(ChimpImageModel.blSampleImageId == plate.imageIds[0])
            .order_by(ChimpImageModel.role)
        ).all()
    assert rows == [
        ("classifier", "convnext_tiny", "a" * 64),
        ("xchem_detector", "maskrcnn_resnet50_fpn", "b" * 64),
    ]


def test_failure_is_recorded_once_and_keeps_earlier_ispyb_rows(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    image_id = plate.imageIds[3]
    write_image_result(factory, image_id, make_analysis())
    assert record_image_failure(factory, image_id, "image_missing", "no such file", "chimp")
    before = snapshot(factory)
    assert not record_image_failure(factory, image_id, "image_missing", "no such file", "chimp")
    assert snapshot(factory) == before
    assert len(before["BLSubSample"]) == 2  # the earlier good result is still visible to staff
    with factory() as session:
        record = session.get(ChimpImageResult, image_id)
        assert record is not None
        assert (record.state, record.failureReason, record.failureDetail) == (
            "failed",
            "image_missing",
            "no such file",
        )
    # The same result as before now rewrites (the digest was cleared) and clears the failure.
    assert write_image_result(factory, image_id, make_analysis()).changed
    with factory() as session:
        record = session.get(ChimpImageResult, image_id)
        assert record is not None
        assert (record.state, record.failureReason) == ("done", None)


def test_bad_inputs_raise_specific_errors(factory: sessionmaker[Session], plate: Plate) -> None:
    with pytest.raises(UnknownImageError, match="BLSampleImage 987654"):
        write_image_result(factory, 987_654, make_analysis())
    with pytest.raises(UnknownImageError):
        record_image_failure(factory, 987_654, "image_missing", "x", "chimp")
    with pytest.raises(AnalysisError, match="'sparkles'"):
        write_image_result(factory, plate.imageIds[0], make_analysis(probabilities={"sparkles": 1}))
    with pytest.raises(MissingScoreClassError, match="NO_SUCH_SCHEMA"):
        write_image_result(factory, plate.imageIds[0], make_analysis(schema="NO_SUCH_SCHEMA"))
    assert snapshot(factory)["BLSubSample"] == []  # nothing half-written


def test_unqueued_targets_stay_in_the_worker_tables_only(
    factory: sessionmaker[Session], plate: Plate
) -> None:
    """A heuristic's candidates must never become queueable auto BLSubSamples."""
    image_id = plate.imageIds[1]
    write_image_result(factory, image_id, make_analysis())  # an earlier trusted result
    assert len(auto_points(factory, image_id)) == 2

    outcome = write_image_result(factory, image_id, make_analysis(), queueable_targets=False)
    rows = snapshot(factory)
    assert outcome.changed
    assert auto_points(factory, image_id) == []
    assert rows["Position"] == []
    assert rows["BLSamplePosition"] == []
    with factory() as session:
        record = session.get(ChimpImageResult, image_id)
        assert record is not None
        assert (record.crystalCount, record.dispenseStatus) == (2, "ok")
        assert record.dispenseX is not None
        assert (
            session.scalar(
                select(func.count())
                .select_from(ChimpDetection)
                .where(ChimpDetection.blSampleImageId == image_id)
            )
            == 3
        )
    # Switching back to queueable rewrites: the flag is part of the stored digest.
    assert write_image_result(factory, image_id, make_analysis()).changed
    assert len(auto_points(factory, image_id)) == 2
