"""The mock imager writes plates the way a facility's imager does: rows, files, completion."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.plates import SMALL_SIZES, plate_settings, served_plate_settings, small_plate
from helpers.synchweb import plate_view
from PIL import Image
from sqlalchemy import func, select, text

from chimp_worker.cli import cli
from chimp_worker.errors import ImageError
from chimp_worker.images import FilesystemSource, ImageOptions, make_image_source
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.progress import inspection_images
from chimp_worker.mock_imager.faults import FILE_FAULTS


def test_a_plate_has_the_facilitys_rows_paths_and_files(ispyb_url: str, tmp_path: Path) -> None:
    root = tmp_path / "images"
    plate = small_plate(ispyb_url, root, barcode="CQX-0042", wells=2, inspections=2)

    factory = make_session_factory(make_engine(ispyb_url))
    with factory() as session:
        container = session.get(t.Container, plate.containerId)
        assert container is not None
        assert (container.barcode, container.containerType) == ("CQX-0042", "CrystalQuickX")
        assert container.containerTypeId == 14
        samples = session.scalars(
            select(t.BLSample).where(t.BLSample.containerId == plate.containerId)
        ).all()
        assert sorted((s.location, s.name) for s in samples) == [
            ("1", "A1_1"),
            ("2", "A1_2"),
            ("3", "A2_1"),
            ("4", "A2_2"),
        ]
        rows = session.scalars(
            select(t.ContainerInspection).where(
                t.ContainerInspection.containerId == plate.containerId
            )
        ).all()
        assert [row.state for row in rows] == ["Completed", "Completed"]
        assert rows[0].completedTimeStamp < rows[1].scheduledTimeStamp
        assert session.scalar(select(func.count()).select_from(t.BLSampleImage)) == 8
        proposal = session.scalar(select(t.Proposal))
        assert (proposal.proposalCode, proposal.proposalNumber) == ("mx", "23456")

    assert plate.visit_dir == root.resolve() / "mx23456-1"
    expected_mpp = round(1.6 * 2532 / 253, 4)
    for inspection in plate.inspections:
        listed = inspection_images(factory, inspection.containerInspectionId)
        assert [image.blSampleImageId for image in listed] == list(inspection.blSampleImageIds)
        for image, row in zip(inspection.images, listed, strict=True):
            expected = (
                f"{plate.visit_dir}/imaging/{plate.containerId}/"
                f"{inspection.containerInspectionId}/{image.blSampleImageId}.jpg"
            )
            assert row.imageFullPath == image.imageFullPath == expected
            assert row.micronsPerPixelX == pytest.approx(expected_mpp, rel=1e-6)
            assert Image.open(image.imageFullPath).size == SMALL_SIZES["vmxi"]
            assert Image.open(image.imageFullPath).mode == "L"
            thumbnail = Path(image.imageFullPath).with_name(f"{image.blSampleImageId}th.jpg")
            assert thumbnail == Path(image.thumbnail_path)
            assert max(Image.open(thumbnail).size) == 253  # already under 256: kept as is
    factory.kw["bind"].dispose()


def test_crystals_grow_between_inspections_of_the_same_drop(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate = small_plate(
        ispyb_sqlite_url,
        tmp_path,
        wells=1,
        inspections=3,
        outcomes={1: "crystals", 2: "clear"},
        onsets={1: 0.0},  # crystals from the first inspection on
        flavour="xchem",
    )
    first_drop = [inspection.images[0].truth for inspection in plate.inspections]
    assert [truth.outcome for truth in first_drop] == ["crystals"] * 3
    assert [inspection.time for inspection in plate.inspections] == [0.0, 0.5, 1.0]
    areas = [next(c.area for c in truth.crystals if c.index == 0) for truth in first_drop]
    assert areas[0] < areas[1] < areas[2]
    assert all(inspection.images[1].truth.outcome == "clear" for inspection in plate.inspections)
    # Same drop, same scene: the drop itself does not move between inspections.
    assert first_drop[0].drop == first_drop[2].drop
    colour = np.asarray(Image.open(plate.latest.images[0].imageFullPath))
    assert colour.shape == (205, 245, 3)


def test_injected_faults_give_the_specific_errors_they_promise(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    faults = {1: "missing", 2: "truncated", 3: "corrupt", 4: "empty", 5: "not_image"}
    plate = small_plate(
        ispyb_sqlite_url, tmp_path, wells=3, faults=faults, inspections=2, fault_inspections={1}
    )
    source = FilesystemSource([tmp_path])
    assert all(image.fault is None for image in plate.inspections[0].images)
    for image in plate.latest.images:
        if image.fault is None:
            assert source.fetch(image.imageFullPath).width == 253
            continue
        with pytest.raises(ImageError) as caught:
            source.fetch(image.imageFullPath)
        assert caught.value.reason == image.expected_failure == FILE_FAULTS[faults[image.location]]
    missing = plate.latest.images[0]
    assert not Path(missing.imageFullPath).exists()
    assert not Path(missing.thumbnail_path).exists()


def test_a_three_drop_plate_numbers_its_locations_per_well(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate = small_plate(ispyb_sqlite_url, tmp_path, wells=2, container_type="SWISSCI 3 Drop")
    assert [(image.location, image.well, image.drop) for image in plate.latest.images] == [
        (1, "A1", 1),
        (2, "A1", 2),
        (3, "A1", 3),
        (4, "A2", 1),
        (5, "A2", 2),
        (6, "A2", 3),
    ]


def test_a_second_plate_joins_the_same_visit_and_barcodes_stay_unique(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    first = small_plate(ispyb_sqlite_url, tmp_path, barcode="A-1", wells=1)
    second = small_plate(ispyb_sqlite_url, tmp_path, barcode="A-2", wells=1, seed=1)
    assert first.visit_dir == second.visit_dir
    assert first.containerId != second.containerId
    with make_engine(ispyb_sqlite_url).connect() as connection:
        assert connection.scalar(select(func.count()).select_from(t.BLSession)) == 1
    with pytest.raises(ValueError, match="barcode 'A-1' already exists"):
        small_plate(ispyb_sqlite_url, tmp_path, barcode="A-1", wells=1)
    with pytest.raises(ValueError, match=re.escape("unknown container type 'Greiner'")):
        small_plate(ispyb_sqlite_url, tmp_path, barcode="A-3", container_type="Greiner")
    with pytest.raises(ValueError, match="fault 'melted' at location 1"):
        small_plate(ispyb_sqlite_url, tmp_path, barcode="A-4", faults={1: "melted"})


def test_the_plate_can_be_fetched_over_http_from_the_mock_server(
    ispyb_sqlite_url: str, tmp_path: Path
) -> None:
    plate = small_plate(ispyb_sqlite_url, tmp_path, wells=1)
    image = plate.latest.images[1]
    from_disk = make_image_source(
        ImageOptions.from_settings(plate_settings(ispyb_sqlite_url, tmp_path))
    ).fetch(image.imageFullPath)
    with served_plate_settings(ispyb_sqlite_url, tmp_path) as (settings, server):
        over_http = make_image_source(ImageOptions.from_settings(settings)).fetch(
            image.imageFullPath, image.blSampleImageId
        )
        assert server.count(image.imageFullPath) == 1
    assert np.array_equal(from_disk.pixels, over_http.pixels)


def test_on_a_facility_the_plate_is_registered_the_way_synchweb_reads_it(facility_url, tmp_path):
    """Container -> Dewar -> Shipping -> Proposal and BLSample -> Crystal -> Protein, every
    row under the facility's foreign keys (Proposal.personId -> Person...): staff see it."""
    plate = small_plate(facility_url, tmp_path, barcode="FAC-1", wells=2, inspections=2)
    factory = make_session_factory(make_engine(facility_url))
    view = plate_view(factory, plate.containerId, plate.containerInspectionIds)
    assert view.visible
    assert view.samples == plate.blSampleIds
    with factory() as session:
        person = session.execute(
            text(
                "SELECT pe.login FROM Container c JOIN BLSession bs ON bs.sessionId = c.sessionId"
                " JOIN Proposal p ON p.proposalId = bs.proposalId"
                " JOIN Person pe ON pe.personId = p.personId WHERE c.containerId = :id"
            ),
            {"id": plate.containerId},
        ).scalar_one()
    assert person == "mock_imager"
    factory.kw["bind"].dispose()


def test_on_a_facility_a_plate_attaches_to_an_existing_visit(facility_url, tmp_path):
    """The facility's own visit (its person, proposal and session as the user office made
    them): the mock imager adds a plate to it and creates no visit of its own."""
    engine = make_engine(facility_url)
    with engine.begin() as connection:
        person = connection.execute(
            text("INSERT INTO Person (familyName, login) VALUES ('Scientist', 'ab12345')")
        ).lastrowid
        proposal = connection.execute(
            text(
                "INSERT INTO Proposal (personId, proposalCode, proposalNumber, title)"
                " VALUES (:person, 'cm', '37235', 'Commissioning')"
            ),
            {"person": person},
        ).lastrowid
        visit = connection.execute(
            text("INSERT INTO BLSession (proposalId, visit_number) VALUES (:proposal, 3)"),
            {"proposal": proposal},
        ).lastrowid
    code = CliRunner().invoke(
        cli,
        [
            "--database-url", facility_url,
            "mock-imager", "--barcode", "FAC-2", "--wells", "1", "--size", "253x203",
            "--visit", "cm37235-3", "--image-root", str(tmp_path),
        ],
    )  # fmt: skip
    assert code.exit_code == 0, code.output
    with engine.connect() as connection:
        session_id, proposal_of_dewar = connection.execute(
            text(
                "SELECT c.sessionId, sh.proposalId FROM Container c"
                " JOIN Dewar d ON d.dewarId = c.dewarId"
                " JOIN Shipping sh ON sh.shippingId = d.shippingId WHERE c.barcode = 'FAC-2'"
            )
        ).one()
        assert (session_id, proposal_of_dewar) == (visit, proposal)
        assert connection.execute(text("SELECT COUNT(*) FROM Proposal")).scalar() == 1
        assert connection.execute(text("SELECT COUNT(*) FROM Person")).scalar() == 1
    engine.dispose()
    assert (tmp_path / "cm37235-3" / "imaging").is_dir()
