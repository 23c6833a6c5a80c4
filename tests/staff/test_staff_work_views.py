"""``results`` (table, CSV, JSON) and ``report`` show the one dispense point SynchWeb shows, whose
it is, and which targets re-processing kept for staff and why (SQLite, MariaDB, facility)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from helpers.staff import KnownPlate, analysis, write_result
from helpers.synchweb import add_dispense_point, move_dispense_point
from sqlalchemy import text

from chimp_worker.cli import main
from chimp_worker.ispyb.queries import find_plate
from chimp_worker.report.build import build_plate_report
from chimp_worker.report.html import render_html


@pytest.fixture
def staff_worked(own_known_plate: KnownPlate) -> tuple[KnownPlate, int]:
    """Drop 1: its dispense point moved in place, one target moved, then a new result.
    Drop 2: a newer dispense point added by hand (its id is returned)."""
    factory, plate = own_known_plate.session_factory, own_known_plate.plate
    move_dispense_point(factory, plate.sample_ids[1], 600.0, 490.0)
    added = add_dispense_point(factory, plate.sample_ids[2], 31.0, 32.0)
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
    return own_known_plate, added


def results(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> str:
    main(["--database-url", url, "results", "--barcode", "STAFF-001", *args])
    return capsys.readouterr().out


def test_json_and_csv_say_whose_dispense_point_and_why_targets_were_kept(capsys, staff_worked):
    known, added = staff_worked
    rows = json.loads(results(capsys, known.url, "--format", "json"))["rows"]
    summary = [
        (r["dispenseX"], r["dispenseY"], r["dispenseBy"], r["keptTargets"], r["kept"]) for r in rows
    ]
    assert summary == [
        (600, 490, "staff", 1, "moved by staff"),
        (31, 32, "staff", 0, None),
        (None, None, None, 0, None),
        (630, 470, "worker", 0, None),
    ]
    assert rows[1]["blSamplePositionId"] == added
    assert rows[0]["dispenseStatus"] == "ok"  # the worker's own finding, beside staff's point
    csv_rows = list(csv.DictReader(io.StringIO(results(capsys, known.url, "--format", "csv"))))
    assert [(r["dispenseX"], r["dispenseBy"], r["kept"]) for r in csv_rows[:2]] == [
        ("600", "staff", "moved by staff"),
        ("31", "staff", ""),
    ]
    crystals = json.loads(results(capsys, known.url, "--crystals", "--format", "json"))["rows"]
    assert [(r["x"], r["y"], r["analyser"], r["kept"]) for r in crystals if r["location"] == 1] == [
        (312, 407, "chimp", "moved by staff"),
        (310, 405, "chimp", None),
        (505, 455, "chimp", None),
    ]
    table = results(capsys, known.url)
    first = next(line for line in table.splitlines() if line.strip().startswith("A1"))
    # ... schema, top class, P, targets, kept, dispense point, whose
    assert first.split()[8:14] == ["3", "moved", "by", "staff", "(600,", "490)"]
    assert "staff" in first.split()[14:]


def test_the_report_draws_the_point_synchweb_shows_and_names_kept_targets(staff_worked):
    known, _ = staff_worked
    plate = find_plate(known.session_factory, barcode="STAFF-001")
    report = build_plate_report(known.session_factory, plate)
    latest = report.inspections[-1]
    first, second = latest.drop_at(1), latest.drop_at(2)
    assert first is not None
    assert second is not None
    assert (first.dispense.x, first.dispense.y, first.dispense.by) == (600.0, 490.0, "staff")
    assert (second.dispense.x, second.dispense.y, second.dispense.by) == (31.0, 32.0, "staff")
    assert [(t.x, t.y, t.kept) for t in first.targets] == [
        (312.0, 407.0, "moved by staff"),
        (310.0, 405.0, None),
        (505.0, 455.0, None),
    ]
    page = render_html(report)
    assert "ok at (600, 490), staff&#39;s" in page or "ok at (600, 490), staff's" in page
    assert "3 (1 kept: moved by staff)" in page
