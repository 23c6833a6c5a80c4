"""``chimp-worker results`` prints what the database holds, in all three formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

from chimp_worker.cli import main


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    try:
        main(["--database-url", url, "results", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_lists_every_drop_of_the_latest_inspection(capsys, known_plate):
    code, out, _ = run(capsys, known_plate.url, "--barcode", "STAFF-001", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert (data["barcode"], data["containerType"], data["visit"]) == (
        "STAFF-001",
        "CrystalQuickX",
        "mx1234-5",
    )
    rows = data["rows"]
    latest = known_plate.plate.inspection_ids[1]
    summary = [
        (
            r["well"],
            r["drop"],
            r["state"],
            r["topClass"],
            r["pCrystal"],
            r["crystalTargets"],
            r["dispenseStatus"],
            r["dispenseX"],
            r["dispenseY"],
        )
        for r in rows
    ]
    assert summary == [
        ("A1", 1, "done", "crystal", 0.95, 3, "ok", 620, 480),
        ("A1", 2, "done", "clear", 0.2, 0, "ok", 615, 525),
        ("A2", 1, "done", "crystal", 0.5, 1, "no drop", None, None),
        ("A2", 2, "done", "clear", 0.05, 0, "ok", 630, 470),
    ]
    assert {r["containerInspectionId"] for r in rows} == {latest}
    assert rows[0]["pClear"] == pytest.approx(0.0375)
    assert rows[0]["schema"] == "CHIMP"


def test_csv_of_one_inspection_shows_failed_and_pending_drops(capsys, known_plate):
    first = known_plate.plate.inspection_ids[0]
    code, out, _ = run(capsys, known_plate.url, "--inspection", str(first), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["well"], r["drop"], r["state"]) for r in rows] == [
        ("A1", "1", "done"),
        ("A1", "2", "done"),
        ("A2", "1", "failed"),
        ("A2", "2", "pending"),
    ]
    assert rows[0]["pCrystal"] == "0.9"
    # The dispense point SynchWeb shows for the drop (from its latest image), the worker's.
    assert [rows[0][c] for c in ("crystalTargets", "dispenseX", "dispenseY", "dispenseBy")] == [
        "2",
        "620",
        "480",
        "worker",
    ]
    assert (rows[2]["failureReason"], rows[2]["pCrystal"], rows[2]["topClass"]) == (
        "image_corrupt",
        "",
        "",
    )


def test_table_shows_the_per_drop_columns(capsys, known_plate):
    code, out, _ = run(capsys, known_plate.url, "--barcode", "STAFF-001")
    assert code == 0
    assert "Plate STAFF-001 · CrystalQuickX · mx1234-5 · latest image per drop" in out
    assert "weight-free baseline" not in out, "the CHiMP models made these results"
    lines = [line.split() for line in out.splitlines() if line.strip().startswith("A")]
    image = {location: str(known_plate.plate.image_ids[(1, location)]) for location in (1, 2, 3, 4)}
    assert lines == [
        [
            "A1",
            "1",
            "1",
            image[1],
            "done",
            "CHIMP",
            "crystal",
            "0.95",
            "3",
            "(620,",
            "480)",
            "worker",
            "ok",
        ],
        [
            "A1",
            "2",
            "2",
            image[2],
            "done",
            "CHIMP",
            "clear",
            "0.2",
            "0",
            "(615,",
            "525)",
            "worker",
            "ok",
        ],
        ["A2", "1", "3", image[3], "done", "CHIMP", "crystal", "0.5", "1", "no", "drop"],
        [
            "A2",
            "2",
            "4",
            image[4],
            "done",
            "CHIMP",
            "clear",
            "0.05",
            "0",
            "(630,",
            "470)",
            "worker",
            "ok",
        ],
    ]


def test_crystals_lists_auto_targets_in_every_format(capsys, known_plate):
    url = known_plate.url
    _, out, _ = run(capsys, url, "--barcode", "STAFF-001", "--crystals", "--format", "json")
    targets = [(r["well"], r["drop"], r["x"], r["y"]) for r in json.loads(out)["rows"]]
    assert targets == [
        ("A1", 1, 310, 405),
        ("A1", 1, 505, 455),
        ("A1", 1, 700, 300),
        ("A2", 1, 400, 400),
    ]
    _, out, _ = run(capsys, url, "--barcode", "STAFF-001", "--crystals", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["x"], r["y"], r["score"]) for r in rows][-1] == ("400", "400", "0.9")
    _, out, _ = run(capsys, url, "--barcode", "STAFF-001", "--crystals")
    assert out.count(" A1 ") == 3


def test_inspections_lists_processing_state(capsys, known_plate):
    first, latest = known_plate.plate.inspection_ids
    _, out, _ = run(
        capsys,
        known_plate.url,
        "--barcode",
        "STAFF-001",
        "--inspections",
        "--format",
        "json",
    )
    rows = json.loads(out)["rows"]
    assert [
        (r["containerInspectionId"], r["images"], r["done"], r["failed"], r["pending"])
        for r in rows
    ] == [(first, 4, 2, 1, 1), (latest, 4, 4, 0, 0)]
    assert rows[0]["completed"] == "2024-03-01 09:20:00"


def test_unknown_barcode_is_one_line_and_exit_status_1(capsys, known_plate):
    code, out, err = run(capsys, known_plate.url, "--barcode", "NOPE")
    assert code == 1
    assert out == ""
    assert err.strip() == "chimp-worker: not_found: no plate (Container) with barcode 'NOPE'"


def test_neither_barcode_nor_inspection_is_a_usage_error(capsys, known_plate):
    code, _, err = run(capsys, known_plate.url)
    assert code == 2
    assert "give --barcode or --inspection" in err
