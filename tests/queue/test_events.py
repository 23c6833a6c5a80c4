"""The wire schema: round trips, and a specific reason for every way a body can be wrong."""

from __future__ import annotations

import json

import pytest

from chimp_worker.errors import EventError
from chimp_worker.events import (
    MAX_EVENT_BYTES,
    InspectionCompleted,
    ResultsReady,
    WorkItem,
    decode_event,
    encode_event,
    plan_work_items,
    results_ready_now,
)


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "event",
    [
        InspectionCompleted(containerInspectionId=7),
        InspectionCompleted(
            containerInspectionId=7, barcode="VMXi-0042", blSampleImageIds=(3, 1, 2), priority=9
        ),
        WorkItem(containerInspectionId=7, blSampleImageIds=(5, 6), reason="replay", priority=2),
        ResultsReady(
            containerInspectionId=7,
            imageCount=288,
            analyser="baseline",
            schemaName="BASELINE_CV",
            completedAt="2026-01-02T03:04:05+00:00",
        ),
    ],
)
def test_every_event_type_survives_encode_then_decode_unchanged(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


def test_the_encoded_form_names_type_version_and_ispyb_fields() -> None:
    data = json.loads(WorkItem(containerInspectionId=4, blSampleImageIds=(9,)).encode())
    assert data == {
        "type": "work.item",
        "version": 1,
        "containerInspectionId": 4,
        "blSampleImageIds": [9],
        "reason": "planned",
        "priority": 0,
    }


def test_an_inspection_event_needs_only_its_inspection_id() -> None:
    event = decode_event(body(type="inspection.completed", version=1, containerInspectionId=12))
    assert event == InspectionCompleted(containerInspectionId=12)
    assert isinstance(event, InspectionCompleted)
    assert event.blSampleImageIds is None
    assert event.priority == 0


@pytest.mark.parametrize(
    ("raw", "reason", "words"),
    [
        (b"", "event_empty", "empty"),
        (b"\xff\xfe{", "event_not_utf8", "UTF-8"),
        (b"{not json", "event_not_json", "not JSON"),
        (b"[1, 2]", "event_not_object", "got list"),
        (body(version=1, containerInspectionId=1), "event_missing_type", "'type'"),
        (body(type="plate.done", version=1), "event_unknown_type", "'plate.done'"),
        (body(type="work.item", containerInspectionId=1), "event_unsupported_version", "None"),
        (
            body(type="work.item", version=2, containerInspectionId=1, blSampleImageIds=[1]),
            "event_unsupported_version",
            "version 2",
        ),
        (
            body(type="work.item", version="1", containerInspectionId=1, blSampleImageIds=[1]),
            "event_unsupported_version",
            "'1'",
        ),
        (
            body(type="work.item", version=1, containerInspectionId=1),
            "event_missing_field",
            "blSampleImageIds",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionId="12"),
            "event_wrong_type",
            "containerInspectionId",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionId=True),
            "event_wrong_type",
            "containerInspectionId",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionId=0),
            "event_bad_value",
            "greater than or equal to 1",
        ),
        (
            body(type="work.item", version=1, containerInspectionId=1, blSampleImageIds=[]),
            "event_bad_value",
            "at least 1",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionId=1, priority=11),
            "event_bad_value",
            "priority",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionID=1),
            "event_missing_field",
            "containerInspectionID",
        ),
        (
            body(type="inspection.completed", version=1, containerInspectionId=1, plate="x"),
            "event_unknown_field",
            "plate",
        ),
        (b"{" + b" " * MAX_EVENT_BYTES + b"}", "event_too_large", "exceeds"),
    ],
)
def test_a_bad_body_raises_event_error_with_a_specific_reason(
    raw: bytes, reason: str, words: str
) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert caught.value.reason == reason
    assert words in str(caught.value)


def test_encode_refuses_an_event_a_worker_would_dead_letter() -> None:
    with pytest.raises(EventError) as caught:
        WorkItem(containerInspectionId=1, blSampleImageIds=()).encode()
    assert caught.value.reason == "event_bad_value"


def test_planning_splits_images_into_ordered_chunks_carrying_the_priority() -> None:
    event = InspectionCompleted(containerInspectionId=3, priority=4)
    items = plan_work_items(event, [10, 11, 12, 13, 14], chunk_size=2)
    assert [item.blSampleImageIds for item in items] == [(10, 11), (12, 13), (14,)]
    assert {item.containerInspectionId for item in items} == {3}
    assert {item.priority for item in items} == {4}
    assert plan_work_items(event, [], chunk_size=8) == []


def test_results_ready_carries_a_utc_timestamp() -> None:
    event = results_ready_now(5, 96, "baseline", "BASELINE_CV")
    assert event.completedAt.endswith("+00:00")
    assert decode_event(event.encode()) == event


COMPLETED = b'{"type": "inspection.completed", "version": 1, '

# Hostile bodies an attacker (or a broken publisher) can put on the queue; each must become an
# EventError with its own reason, never another exception (which would requeue it for ever).
HOSTILE_BODIES = {
    "deep_list": (b"[" * 200_000 + b"]" * 200_000, "event_too_deep"),
    "deep_object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "event_too_deep"),
    "deep_inside_a_field": (
        COMPLETED + b'"containerInspectionId": 1, "barcode": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "event_too_deep",
    ),
    "five_thousand_digit_id": (
        COMPLETED + b'"containerInspectionId": ' + b"9" * 5000 + b"}",
        "event_number_too_long",
    ),
    "huge_exponent": (COMPLETED + b'"containerInspectionId": 1e999999}', "event_not_finite"),
    "nan": (COMPLETED + b'"containerInspectionId": NaN}', "event_not_finite"),
    "infinity": (COMPLETED + b'"containerInspectionId": -Infinity}', "event_not_finite"),
    "lone_surrogate_escape": (
        COMPLETED + b'"containerInspectionId": 1, "barcode": "\\ud800"}',
        "event_bad_unicode",
    ),
    "surrogate_key": (
        COMPLETED + b'"containerInspectionId": 1, "\\udfff": 1}',
        "event_bad_unicode",
    ),
    "duplicate_key": (
        COMPLETED + b'"containerInspectionId": 1, "containerInspectionId": 2}',
        "event_duplicate_key",
    ),
    "duplicate_type": (
        b'{"type": "work.item", "type": "inspection.completed", "version": 1, '
        b'"containerInspectionId": 1}',
        "event_duplicate_key",
    ),
    "bom": (b"\xef\xbb\xbf" + COMPLETED + b'"containerInspectionId": 1}', "event_not_json"),
    "bad_escape": (
        COMPLETED + b'"containerInspectionId": 1, "barcode": "\\x41"}',
        "event_not_json",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_a_hostile_body_is_an_event_error_with_its_own_reason(name: str) -> None:
    raw, reason = HOSTILE_BODIES[name]
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert caught.value.reason == reason
    assert len(str(caught.value)) < 500, "the reason fits a dead-letter header"


def test_a_value_the_validator_cannot_even_show_is_still_an_event_error() -> None:
    # pydantic's message would repr the input; a huge nested value must not break that
    raw = COMPLETED + b'"containerInspectionId": 1, "barcode": ' + b"[" * 30 + b"]" * 30 + b"}"
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert caught.value.reason in ("event_wrong_type", "event_too_deep")


def test_a_twenty_digit_number_is_read_and_refused_by_its_range_not_its_length() -> None:
    raw = COMPLETED + b'"containerInspectionId": 12345678901234567890}'
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert caught.value.reason == "event_bad_value"
