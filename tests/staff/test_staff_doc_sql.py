"""The SQL docs/staff.md gives beamline staff runs on MariaDB and SQLite and returns what the
database holds (values from ``helpers.staff.KNOWN``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.staff import analysis, write_result
from helpers.synchweb import move_dispense_point
from sqlalchemy import text

STAFF_DOC = Path(__file__).resolve().parents[2] / "docs" / "staff.md"


def staff_queries() -> dict[str, str]:
    """'-- staff: NAME' first line -> the SQL block, from docs/staff.md."""
    section = STAFF_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    queries = {}
    for block in blocks:
        first, _, _ = block.partition("\n")
        match = re.fullmatch(r"-- staff: (.+)", first.strip())
        assert match, f"docs/staff.md SQL block without a '-- staff: name' line: {first!r}"
        queries[match.group(1)] = block
    return queries


def run(known_plate, name: str) -> list[dict]:
    with known_plate.session_factory() as session:
        result = session.execute(text(staff_queries()[name]), {"barcode": "STAFF-001"})
        return [dict(row) for row in result.mappings()]


def test_the_readme_names_each_staff_query():
    assert set(staff_queries()) == {
        "latest result per drop",
        "auto crystal targets",
        "inspections of a plate",
        "failed images",
        "model files behind the results",
    }


def test_latest_result_per_drop(known_plate):
    rows = run(known_plate, "latest result per drop")
    latest = known_plate.plate.image_ids
    assert [(int(r["location"]), r["blSampleImageId"], r["state"]) for r in rows] == [
        (1, latest[(1, 1)], "done"),
        (2, latest[(1, 2)], "done"),
        (3, latest[(1, 3)], "done"),
        (4, latest[(1, 4)], "done"),
    ]
    assert [r["pCrystal"] for r in rows] == pytest.approx([0.95, 0.2, 0.5, 0.05], abs=1e-6)
    assert rows[0]["pClear"] == pytest.approx(0.0375, abs=1e-6)
    assert [r["crystalCount"] for r in rows] == [3, 0, 1, 0]
    assert [
        (r["dispenseStatus"], r["dispenseX"], r["dispenseY"], r["dispenseBy"]) for r in rows
    ] == [
        ("ok", 620.0, 480.0, "worker"),
        ("ok", 615.0, 525.0, "worker"),
        ("no drop", None, None, None),
        ("ok", 630.0, 470.0, "worker"),
    ]


def test_auto_crystal_targets(known_plate):
    rows = run(known_plate, "auto crystal targets")
    assert [(int(r["location"]), r["posX"], r["posY"]) for r in rows] == [
        (1, 310.0, 405.0),
        (1, 505.0, 455.0),
        (1, 700.0, 300.0),
        (3, 400.0, 400.0),
    ]
    assert {round(r["score"], 4) for r in rows} == {0.9}
    assert {(r["analyser"], r["keptReason"]) for r in rows} == {("chimp", None)}


def test_staff_sql_says_whose_dispense_point_and_why_a_target_was_kept(own_known_plate):
    """Staff move drop 1's dispense point and one of its targets; a new result comes."""
    factory, plate = own_known_plate.session_factory, own_known_plate.plate
    move_dispense_point(factory, plate.sample_ids[1], 600.0, 490.0)
    image = plate.image_ids[(1, 1)]
    with factory.begin() as session:
        session.execute(
            text(
                "UPDATE Position SET posX = 312, posY = 407 WHERE positionId = (SELECT positionId"
                " FROM BLSubSample WHERE blSampleImageId = :image AND source = 'auto'"
                " ORDER BY blSubSampleId LIMIT 1)"
            ),
            {"image": image},
        )
    write_result(factory, image, analysis(0.95, [(310, 405), (505, 455)], (620, 480)))
    rows = run(own_known_plate, "latest result per drop")
    assert [(r["dispenseX"], r["dispenseY"], r["dispenseBy"]) for r in rows[:2]] == [
        (600.0, 490.0, "staff"),
        (615.0, 525.0, "worker"),
    ]
    targets = run(own_known_plate, "auto crystal targets")
    assert [(r["posX"], r["posY"], r["keptReason"]) for r in targets if r["location"] == "1"] == [
        (312.0, 407.0, "moved by staff"),
        (310.0, 405.0, None),
        (505.0, 455.0, None),
    ]


def test_inspections_of_a_plate(known_plate):
    rows = run(known_plate, "inspections of a plate")
    first, latest = known_plate.plate.inspection_ids
    assert [
        (r["containerInspectionId"], r["images"], int(r["done"]), int(r["failed"])) for r in rows
    ] == [(first, 4, 2, 1), (latest, 4, 4, 0)]


def test_failed_images(known_plate):
    rows = run(known_plate, "failed images")
    assert [(int(r["location"]), r["failureReason"]) for r in rows] == [(3, "image_corrupt")]
    assert rows[0]["blSampleImageId"] == known_plate.plate.image_ids[(0, 3)]


def test_model_files_behind_the_results(known_plate):
    rows = run(known_plate, "model files behind the results")
    first, latest = known_plate.plate.inspection_ids
    assert [
        (r["containerInspectionId"], r["role"], r["sha256"][:4], r["images"]) for r in rows
    ] == [
        (first, "classifier", "aaaa", 2),
        (first, "xchem_detector", "bbbb", 2),
        (latest, "classifier", "aaaa", 4),
        (latest, "xchem_detector", "bbbb", 4),
    ]
