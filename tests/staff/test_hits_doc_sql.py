"""The SQL docs/hits.md gives beamline staff runs on MariaDB and SQLite and returns the time
courses of the plate of helpers/hit_plates.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hit_plates import complete, seed_hit_plate
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.ispyb.database import make_engine, make_session_factory

HITS_DOC = Path(__file__).resolve().parents[2] / "docs" / "hits.md"


def staff_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", HITS_DOC.read_text(encoding="utf-8"), flags=re.S)
    queries = {}
    for block in blocks:
        first, _, _ = block.partition("\n")
        match = re.fullmatch(r"-- staff: (.+)", first.strip())
        assert match, f"docs/hits.md SQL block without a '-- staff: name' line: {first!r}"
        queries[match.group(1)] = block
    return queries


@pytest.fixture
def factory(ispyb_url: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(ispyb_url)
    factory = make_session_factory(engine)
    plate = seed_hit_plate(factory, tmp_path)
    for inspection_id in plate.inspection_ids:
        complete(factory, inspection_id)
    yield factory
    engine.dispose()


def run(factory: sessionmaker[Session], name: str) -> list[dict]:
    with factory() as session:
        rows = session.execute(text(staff_queries()[name]), {"barcode": "HITS-001"})
        return [dict(row) for row in rows.mappings()]


def test_the_doc_names_each_staff_query() -> None:
    assert set(staff_queries()) == {
        "crystal hits of a plate, ranked",
        "time course of a plate's drops",
    }


def test_crystal_hits_of_a_plate_ranked(factory) -> None:
    rows = run(factory, "crystal hits of a plate, ranked")
    assert [(str(r["location"]), r["firstHitInspection"], r["crystalCount"]) for r in rows] == [
        ("2", 1, 1),
        ("1", 2, 3),
        ("4", 3, 1),
    ]
    assert [round(r["promise"], 4) for r in rows] == [0.8277, 0.8227, 0.4977]


def test_time_course_of_a_plates_drops(factory) -> None:
    rows = run(factory, "time course of a plate's drops")
    drop1 = [(r["inspectionNumber"], r["crystalCount"], bool(r["isHit"])) for r in rows[:3]]
    assert drop1 == [(1, 0, False), (2, 1, True), (3, 3, True)]
    assert len(rows) == 11  # 12 images, one failed
