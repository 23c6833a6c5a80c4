"""results-ready version 2: the plate and the new hits on the wire, version 1 still readable."""

from __future__ import annotations

import json

import pytest

from chimp_worker.errors import EventError
from chimp_worker.events import NewHit, ResultsReady, decode_event, results_ready_now

HIT = NewHit(
    blSampleId=9012,
    location="17",
    well="A9",
    drop=1,
    inspectionNumber=3,
    score=0.94,
    crystalCount=2,
    crystalAreaUm2=5310.7,
)
VERSION_1 = {
    "type": "inspection.results-ready",
    "version": 1,
    "containerInspectionId": 4713,
    "imageCount": 192,
    "analyser": "chimp",
    "schemaName": "CHIMP",
    "completedAt": "2026-05-03T12:00:00+00:00",
}


def test_version_2_carries_the_plate_and_its_new_hits() -> None:
    event = results_ready_now(
        4713, 192, "chimp", "CHIMP", container_id=88, barcode="CQX-0001", new_hits=[HIT]
    )
    data = json.loads(event.encode())
    assert (data["version"], data["containerId"], data["barcode"]) == (2, 88, "CQX-0001")
    assert data["newHits"] == [
        {
            "blSampleId": 9012,
            "location": "17",
            "well": "A9",
            "drop": 1,
            "inspectionNumber": 3,
            "score": 0.94,
            "crystalCount": 2,
            "crystalAreaUm2": 5310.7,
        }
    ]
    assert decode_event(event.encode()) == event


def test_version_1_is_still_read_without_plate_or_hits() -> None:
    event = decode_event(json.dumps(VERSION_1).encode())
    assert isinstance(event, ResultsReady)
    assert (event.containerId, event.barcode, event.newHits) == (None, None, ())


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"newHits": []}, "event_unknown_field", "version 1 has no field newHits"),
        ({"version": 3}, "event_unsupported_version", "this worker reads 1, 2"),
        (
            {"version": 2, "newHits": [{**HIT.__dict__, "score": 1.5}]},
            "event_bad_value",
            "newHits.0.score",
        ),
        (
            {"version": 2, "newHits": [{**HIT.__dict__, "crystalCount": "2"}]},
            "event_wrong_type",
            "newHits.0.crystalCount",
        ),
        (
            {"version": 2, "newHits": [{**HIT.__dict__, "colour": "green"}]},
            "event_unknown_field",
            "newHits.0.colour",
        ),
    ],
)
def test_a_bad_results_ready_names_the_field(changes: dict, reason: str, detail: str) -> None:
    with pytest.raises(EventError) as error:
        decode_event(json.dumps({**VERSION_1, **changes}).encode())
    assert error.value.reason == reason
    assert detail in str(error.value)
