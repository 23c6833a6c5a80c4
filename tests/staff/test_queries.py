"""The staff queries read exactly what the writer put into ISPyB, the way SynchWeb does."""

from __future__ import annotations

import datetime as dt

import pytest
from helpers.staff import KNOWN
from sqlalchemy import select

from chimp_worker.errors import NotFoundError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.queries import (
    crystal_targets,
    drop_results,
    find_plate,
    plate_inspections,
)


def test_find_plate_by_barcode_resolves_geometry_and_visit(known_plate):
    plate = find_plate(known_plate.session_factory, barcode="STAFF-001")
    assert plate.containerId == known_plate.plate.containerId
    assert plate.container_type == "CrystalQuickX"
    assert (plate.layout.wells, plate.layout.drops_per_well) == (96, 2)
    assert plate.visit == "mx1234-5"
    by_inspection = find_plate(
        known_plate.session_factory, inspection_id=known_plate.plate.inspection_ids[1]
    )
    assert by_inspection == plate


def test_unknown_barcode_and_inspection_are_named_in_the_error(known_plate):
    with pytest.raises(NotFoundError, match="'NOPE'"):
        find_plate(known_plate.session_factory, barcode="NOPE")
    with pytest.raises(NotFoundError, match="ContainerInspection 999999"):
        find_plate(known_plate.session_factory, inspection_id=999999)


def test_latest_view_shows_each_drops_latest_image_and_dispense_position(known_plate):
    factory = known_plate.session_factory
    plate = find_plate(factory, barcode="STAFF-001")
    drops = drop_results(factory, plate)
    assert [d.location for d in drops] == [1, 2, 3, 4]
    assert [d.well for d in drops] == ["A1", "A1", "A2", "A2"]
    assert [d.drop for d in drops] == [1, 2, 1, 2]
    latest = known_plate.plate.inspection_ids[1]
    assert {d.containerInspectionId for d in drops} == {latest}
    for drop in drops:
        p_crystal, targets, dispense = KNOWN[(1, drop.location)]
        assert drop.state == "done"
        assert drop.schemaName == "CHIMP"
        assert drop.pCrystal == pytest.approx(p_crystal, abs=1e-6)
        assert drop.probabilities["clear"] == pytest.approx((1 - p_crystal) * 0.75, abs=1e-5)
        assert [(tg.x, tg.y) for tg in drop.targets] == [(float(x), float(y)) for x, y in targets]
        if dispense is None:
            assert (drop.dispenseStatus, drop.dispenseX, drop.dispenseY) == ("no drop", None, None)
        else:
            assert (drop.dispenseStatus, drop.dispenseX, drop.dispenseY) == ("ok", *dispense)
    assert drops[0].topClass == "crystal"
    assert drops[1].topClass == "clear"


def test_inspection_view_shows_that_inspections_results_failures_and_pending(known_plate):
    factory = known_plate.session_factory
    plate = find_plate(factory, barcode="STAFF-001")
    first = known_plate.plate.inspection_ids[0]
    drops = {d.location: d for d in drop_results(factory, plate, first)}
    assert drops[1].pCrystal == pytest.approx(0.9, abs=1e-6)
    assert len(drops[1].targets) == 2
    # One dispense point in every view: the one SynchWeb shows for the sample (the worker's,
    # from the sample's latest image), beside this image's own finding.
    latest = known_plate.plate.image_ids
    assert (drops[1].dispenseStatus, drops[1].dispenseX, drops[1].dispenseY) == ("ok", 620, 480)
    assert (drops[1].dispenseBy, drops[1].dispense.blSampleImageId) == ("worker", latest[(1, 1)])
    assert (drops[2].dispenseX, drops[2].dispenseY, drops[2].dispenseBy) == (615, 525, "worker")
    assert (drops[3].state, drops[3].failureReason, drops[3].probabilities) == (
        "failed",
        "image_corrupt",
        {},
    )
    assert (drops[4].state, drops[4].pCrystal, drops[4].targets) == ("pending", None, ())


def test_latest_view_ignores_inspections_that_are_not_completed(own_known_plate):
    known_plate = own_known_plate
    factory = known_plate.session_factory
    plate_row = known_plate.plate
    with factory() as session, session.begin():
        scheduled = t.ContainerInspection(
            containerId=plate_row.containerId,
            inspectionTypeId=1,
            state="Imaging",
            blTimeStamp=dt.datetime(2024, 3, 9),
        )
        session.add(scheduled)
        session.flush()
        session.add(
            t.BLSampleImage(
                blSampleId=plate_row.sample_ids[1],
                containerInspectionId=scheduled.containerInspectionId,
                imageFullPath="/nowhere/in-progress.jpg",
            )
        )
    plate = find_plate(factory, barcode="STAFF-001")
    drops = drop_results(factory, plate)
    assert drops[0].blSampleImageId == plate_row.image_ids[(1, 1)]


def test_crystal_targets_lists_only_auto_subsamples_with_their_detector_score(known_plate):
    factory = known_plate.session_factory
    plate = find_plate(factory, barcode="STAFF-001")
    rows = crystal_targets(factory, plate)
    assert [(drop.location, target.x, target.y) for drop, target in rows] == [
        (1, 310.0, 405.0),
        (1, 505.0, 455.0),
        (1, 700.0, 300.0),
        (3, 400.0, 400.0),
    ]
    assert all(target.score == pytest.approx(0.9) for _, target in rows)
    with known_plate.session_factory() as session:
        manual = session.scalars(
            select(t.BLSubSample.blSubSampleId).where(t.BLSubSample.source == "manual")
        ).all()
    assert len(manual) == 1
    assert manual[0] not in {target.blSubSampleId for _, target in rows}


def test_inspections_list_counts_images_by_state_and_names_the_models(known_plate):
    factory = known_plate.session_factory
    plate = find_plate(factory, barcode="STAFF-001")
    first, second = plate_inspections(factory, plate)
    assert (first.images, first.done, first.failed, first.pending) == (4, 2, 1, 1)
    assert first.processing == "in progress"
    assert (second.images, second.done, second.failed, second.pending) == (4, 4, 0, 0)
    assert second.state == "Completed"
    assert second.models == (
        "classifier convnext_tiny aaaaaaaaaaaa",
        "xchem_detector maskrcnn_resnet50_fpn bbbbbbbbbbbb",
    )


def test_asking_for_another_plates_inspection_is_refused(known_plate):
    factory = known_plate.session_factory
    plate = find_plate(factory, barcode="STAFF-001")
    with pytest.raises(NotFoundError, match="no ContainerInspection 424242"):
        drop_results(factory, plate, 424242)
