"""``chimp-worker hits`` lists the drops that became hits, ranked, in three formats.

The plate of helpers/hit_plates.py (first hits: A1.2 at inspection 1, A1.1 at 2, A2.2 at 3;
A2.1 never), on SQLite and MariaDB, through the real command.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hit_plates import complete, seed_hit_plate
from helpers.staff import SeededPlate

from chimp_worker.cli import main
from chimp_worker.ispyb.database import make_engine, make_session_factory

REQUIRED_FIELDS = {
    "barcode",
    "blSampleId",
    "location",
    "firstHitInspection",
    "firstHitAt",
    "score",
    "crystalCount",
    "crystalAreaUm2",
}


@pytest.fixture
def hit_plate(ispyb_url: str, tmp_path: Path) -> Iterator[tuple[str, SeededPlate]]:
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = seed_hit_plate(factory, tmp_path)
    for inspection_id in plate.inspection_ids:
        complete(factory, inspection_id)
    yield ispyb_url, plate
    engine.dispose()


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    try:
        main(["--database-url", url, "hits", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_lists_the_plates_hits_ranked_with_their_first_hit(capsys, hit_plate) -> None:
    url, plate = hit_plate
    code, out, _ = run(capsys, url, "--barcode", "HITS-001", "--format", "json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert all(set(row) >= REQUIRED_FIELDS for row in rows)
    summary = [
        (
            r["rank"],
            r["well"],
            r["drop"],
            r["location"],
            r["blSampleId"],
            r["firstHitInspection"],
            r["firstHitAt"],
            r["crystalCount"],
            r["crystalAreaUm2"],
        )
        for r in rows
    ]
    sample = plate.sample_ids
    # ranked by promise = 0.5 score + 0.25 size + 0.25 growth: A1.2 (0.96, its crystal appeared
    # after the first hit: growth 1) 0.8277 > A1.1 (0.95, area tripled) 0.8227 > A2.2 (0.8)
    assert summary == [
        (1, "A1", 2, "2", sample[2], 1, "2024-03-01 09:20:00", 1, 1200.0),
        (2, "A1", 1, "1", sample[1], 2, "2024-03-02 09:20:00", 3, 3600.0),
        (3, "A2", 2, "4", sample[4], 3, "2024-03-03 09:20:00", 1, 1200.0),
    ]
    assert [r["promise"] for r in rows] == [0.8277, 0.8227, 0.4977]
    first = rows[1]
    assert (first["score"], first["growthUm2"], first["growthFactor"]) == (0.95, 2400.0, 3.0)
    assert (first["visit"], first["firstHitInspectionId"]) == ("mx1234-5", plate.inspection_ids[1])
    assert (rows[0]["growthUm2"], rows[0]["growthFactor"]) == (1200.0, None)
    assert [(p["inspection"], p["isHit"], p["crystalCount"]) for p in first["course"]] == [
        (1, False, 0),
        (2, True, 1),
        (3, True, 3),
    ]


def test_new_lists_the_hits_first_seen_in_the_period(capsys, hit_plate) -> None:
    url, _plate = hit_plate
    _, out, _ = run(capsys, url, "--barcode", "HITS-001", "--new", "--format", "json")
    assert [r["well"] + "." + str(r["drop"]) for r in json.loads(out)["rows"]] == ["A2.2"]
    _, out, _ = run(
        capsys, url, "--visit", "mx1234-5", "--since", "2024-03-02", "--new", "--format", "json"
    )
    assert [r["location"] for r in json.loads(out)["rows"]] == ["1", "4"]
    # without --new, --since keeps drops that were hits at an inspection since: A1.2 too
    _, out, _ = run(capsys, url, "--since", "2024-03-02 12:00", "--format", "json")
    assert sorted(r["location"] for r in json.loads(out)["rows"]) == ["1", "2", "4"]
    _, out, _ = run(capsys, url, "--since", "2024-03-03 10:00", "--format", "json")
    assert json.loads(out)["rows"] == []


def test_all_ranks_every_drop_and_csv_carries_every_column(capsys, hit_plate) -> None:
    url, _ = hit_plate
    code, out, _ = run(capsys, url, "--barcode", "HITS-001", "--all", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["rank"], r["well"], r["drop"], r["isHit"]) for r in rows] == [
        ("1", "A1", "2", "True"),
        ("2", "A1", "1", "True"),
        ("3", "A2", "2", "True"),
        ("4", "A2", "1", "False"),
    ]
    assert rows[3]["firstHitInspection"] == ""
    assert rows[3]["score"] == "0.5"


def test_the_table_is_for_people_and_errors_are_one_line(capsys, hit_plate) -> None:
    url, _ = hit_plate
    code, out, _ = run(capsys, url, "--barcode", "HITS-001")
    assert code == 0
    assert "HITS-001 · crystal hits ranked by promise" in out
    assert "firstHitInspection" in out
    assert "crystalAreaUm2" in out
    code, _, err = run(capsys, url, "--barcode", "NOPE")
    assert (code, err.strip()) == (
        1,
        "chimp-worker: not_found: no plate (Container) with barcode 'NOPE'",
    )
    code, _, err = run(capsys, url, "--visit", "mx1234")
    assert code == 2
    assert "expected the form mx12345-6" in err
    code, _, err = run(capsys, url)
    assert code == 2
    assert "give --barcode, --visit or --since" in err


def test_refresh_applies_a_new_thresholds_file(capsys, hit_plate, tmp_path, monkeypatch) -> None:
    url, _ = hit_plate
    thresholds = tmp_path / "hits.json"
    thresholds.write_text(
        json.dumps({"version": 1, "analysers": {"chimp": {"classifier_threshold": 0.25}}})
    )
    monkeypatch.setenv("CHIMP_HIT_RULE", "classifier")
    monkeypatch.setenv("CHIMP_HIT_THRESHOLDS_FILE", str(thresholds))
    code, out, err = run(capsys, url, "--barcode", "HITS-001", "--refresh", "--format", "json")
    assert code == 0
    assert "refreshed the time course of 1 plate(s) (classifier rule)" in err
    rows = {r["location"]: r for r in json.loads(out)["rows"]}
    # P(crystal) alone now: A1.1 (0.6 at 2) stays first hit at 2; A1.2 no longer misses at 2
    assert rows["1"]["firstHitInspection"] == 2
    assert [p["isHit"] for p in rows["2"]["course"]] == [True, True, True]
    assert "3" not in rows  # P 0.1 stays under 0.25
