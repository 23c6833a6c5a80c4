"""The messages on the queues: a versioned JSON schema, frozen dataclasses, strict decoding.

Every body is one JSON object ``{"type": ..., "version": N, ...fields}``; field names are
ISPyB's own (camelCase) so a message reads like the rows it names. Decoding is strict: an
unknown type, an unsupported version, a missing, mistyped or unknown field, or a body that is
not UTF-8 JSON raises ``EventError`` with a specific ``reason`` -- the consumer dead-letters
it with that reason instead of requeueing it for ever. Any change to a type's fields bumps its
version. ``encode()`` validates too, so no process publishes what a worker would reject.

    inspection.completed  an imager finished a plate inspection (from the imager / replay)
    work.item             a few images of one inspection to analyse (planned by the worker)
    inspection.results-ready  every image has a result or a recorded failure (from the worker);
                              version 2 adds the plate and the drops that became crystal hits

Each type has its own version (``EVENT_VERSIONS``); a reader also accepts the older versions
listed in ``READABLE_VERSIONS`` (results-ready 1: no plate, no new hits).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config

from chimp_worker.errors import EventError

SCHEMA_VERSION = 1  # inspection.completed and work.item
RESULTS_READY_VERSION = 2  # 2: containerId, barcode and newHits added
MAX_EVENT_BYTES = 1024 * 1024  # a 288-image plate's ids fit in about 3 KiB
MAX_IMAGES_PER_EVENT = 10_000
CONTENT_TYPE = "application/json"

DatabaseId = Annotated[int, Strict(), Field(ge=1, le=2**32 - 1)]
ImageIds = Annotated[tuple[DatabaseId, ...], Field(min_length=1, max_length=MAX_IMAGES_PER_EVENT)]
Priority = Annotated[int, Strict(), Field(ge=0, le=9)]
ShortText = Annotated[str, Strict(), Field(min_length=1, max_length=255)]

_STRICT_FIELDS = ConfigDict(extra="forbid")


@with_config(_STRICT_FIELDS)
@dataclasses.dataclass(frozen=True)
class InspectionCompleted:
    """An imager marked a ContainerInspection 'Completed': analyse its images.

    ``blSampleImageIds`` narrows the work to those images (None: every image of the
    inspection that still needs work). ``priority`` 0-9 is carried onto the work items.
    """

    event_type: ClassVar[str] = "inspection.completed"

    containerInspectionId: DatabaseId
    barcode: ShortText | None = None
    blSampleImageIds: ImageIds | None = None
    priority: Priority = 0

    def encode(self) -> bytes:
        return _encode(self)


@with_config(_STRICT_FIELDS)
@dataclasses.dataclass(frozen=True)
class WorkItem:
    """A unit of work small enough to finish well inside the broker's consumer timeout.

    ``reason`` says who asked for it (``planned``, ``replay``, ``model-changed``...) for logs.
    """

    event_type: ClassVar[str] = "work.item"

    containerInspectionId: DatabaseId
    blSampleImageIds: ImageIds
    reason: ShortText = "planned"
    priority: Priority = 0

    def encode(self) -> bytes:
        return _encode(self)


Score = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]


@with_config(_STRICT_FIELDS)
@dataclasses.dataclass(frozen=True)
class NewHit:
    """A drop that first became a crystal hit at this inspection (``chimp-worker hits``).

    ``location`` is BLSample.location (the drop's index on the plate), ``well``/``drop`` its
    place (None when the location does not fit the plate type), ``inspectionNumber`` the
    inspection's 1-based position in time order, ``score`` the hit rule's score (0..1).
    """

    blSampleId: DatabaseId
    location: ShortText | None
    well: ShortText | None
    drop: Annotated[int, Strict(), Field(ge=1)] | None
    inspectionNumber: Annotated[int, Strict(), Field(ge=1)]
    score: Score
    crystalCount: Annotated[int, Strict(), Field(ge=0)]
    crystalAreaUm2: Annotated[float, Strict(), Field(ge=0.0)] | None


@with_config(_STRICT_FIELDS)
@dataclasses.dataclass(frozen=True)
class ResultsReady:
    """Every image of the inspection has a result or a recorded failure (at least once).

    ``newHits`` lists the drops whose first hit (in time order) is this inspection, best
    first; a repeated event for the same inspection repeats them (treat it as a refresh).
    """

    event_type: ClassVar[str] = "inspection.results-ready"

    containerInspectionId: DatabaseId
    imageCount: Annotated[int, Strict(), Field(ge=0)]
    analyser: ShortText
    schemaName: ShortText
    completedAt: ShortText  # ISO 8601, UTC
    containerId: DatabaseId | None = None
    barcode: ShortText | None = None
    newHits: Annotated[tuple[NewHit, ...], Field(max_length=MAX_IMAGES_PER_EVENT)] = ()

    def encode(self) -> bytes:
        return _encode(self)


Event = InspectionCompleted | WorkItem | ResultsReady

EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls for cls in (InspectionCompleted, WorkItem, ResultsReady)
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(cls) for name, cls in EVENT_TYPES.items()
}
# The version each type is written with, and the versions a reader accepts.
EVENT_VERSIONS: dict[str, int] = {
    InspectionCompleted.event_type: SCHEMA_VERSION,
    WorkItem.event_type: SCHEMA_VERSION,
    ResultsReady.event_type: RESULTS_READY_VERSION,
}
READABLE_VERSIONS: dict[str, frozenset[int]] = {
    InspectionCompleted.event_type: frozenset({SCHEMA_VERSION}),
    WorkItem.event_type: frozenset({SCHEMA_VERSION}),
    ResultsReady.event_type: frozenset({1, RESULTS_READY_VERSION}),
}
_VERSION_1_RESULTS_FIELDS = frozenset({"containerId", "barcode", "newHits"})

# pydantic error types -> our reasons; anything else is a bad value.
_REASON_BY_ERROR = {
    "missing": "event_missing_field",
    "extra_forbidden": "event_unknown_field",
    "unexpected_keyword_argument": "event_unknown_field",
    "int_type": "event_wrong_type",
    "float_type": "event_wrong_type",
    "string_type": "event_wrong_type",
    "tuple_type": "event_wrong_type",
    "dataclass_type": "event_wrong_type",
}


def decode_event(body: bytes) -> Event:
    """Parse and validate one message body; raises ``EventError`` naming what is wrong."""
    if not body:
        raise EventError("empty message body", reason="event_empty")
    if len(body) > MAX_EVENT_BYTES:
        raise EventError(
            f"message body of {len(body)} bytes exceeds {MAX_EVENT_BYTES}", reason="event_too_large"
        )
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"body is not UTF-8: {exc}", reason="event_not_utf8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(f"body is not JSON: {exc}", reason="event_not_json") from None
    if not isinstance(data, dict):
        raise EventError(
            f"body must be a JSON object, got {type(data).__name__}", reason="event_not_object"
        )
    event_type = data.pop("type", None)
    if event_type is None:
        raise EventError("no 'type' field", reason="event_missing_type")
    if event_type not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise EventError(
            f"unknown event type {event_type!r} (known: {known})", reason="event_unknown_type"
        )
    version = data.pop("version", None)
    readable = READABLE_VERSIONS[event_type]
    if type(version) is not int or version not in readable:
        shown = ", ".join(str(v) for v in sorted(readable))
        raise EventError(
            f"{event_type}: unsupported version {version!r} (this worker reads {shown})",
            reason="event_unsupported_version",
        )
    if event_type == ResultsReady.event_type and version == 1:
        added = sorted(_VERSION_1_RESULTS_FIELDS & set(data))
        if added:
            raise EventError(
                f"{event_type}: version 1 has no field {', '.join(added)}",
                reason="event_unknown_field",
            )
    try:
        return _ADAPTERS[event_type].validate_python(data)
    except ValidationError as exc:
        raise _event_error(event_type, exc) from None


def encode_event(event: Event) -> bytes:
    """The wire form of an event: compact UTF-8 JSON, validated like an incoming one."""
    return _encode(event)


def plan_work_items(
    event: InspectionCompleted, image_ids: Sequence[int], chunk_size: int
) -> list[WorkItem]:
    """Split the images that need work into work items of at most ``chunk_size`` ids, in order.

    Small items spread a plate across every running worker and keep each message's work far
    below the broker's consumer timeout.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    ids = list(image_ids)
    return [
        WorkItem(
            containerInspectionId=event.containerInspectionId,
            blSampleImageIds=tuple(ids[start : start + chunk_size]),
            reason="planned",
            priority=event.priority,
        )
        for start in range(0, len(ids), chunk_size)
    ]


def results_ready_now(
    inspection_id: int,
    image_count: int,
    analyser: str,
    schema_name: str,
    *,
    container_id: int | None = None,
    barcode: str | None = None,
    new_hits: Sequence[NewHit] = (),
) -> ResultsReady:
    return ResultsReady(
        containerInspectionId=inspection_id,
        imageCount=image_count,
        analyser=analyser,
        schemaName=schema_name,
        completedAt=datetime.now(UTC).isoformat(timespec="seconds"),
        containerId=container_id,
        barcode=barcode,
        newHits=tuple(new_hits),
    )


def _encode(event: Event) -> bytes:
    fields = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(event).items()
    }
    version = EVENT_VERSIONS[event.event_type]
    body = json.dumps(
        {"type": event.event_type, "version": version, **fields}, separators=(",", ":")
    ).encode("utf-8")
    decode_event(body)  # never publish what a worker would dead-letter
    return body


def _event_error(event_type: str, exc: ValidationError) -> EventError:
    """One line naming every bad field; the reason is that of the first problem."""
    problems = []
    reasons = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or event_type
        reasons.append(_REASON_BY_ERROR.get(error["type"], "event_bad_value"))
        shown = "" if error["type"] == "missing" else f" (got {error.get('input')!r:.80})"
        problems.append(f"{field}: {error['msg']}{shown}")
    return EventError(f"{event_type}: {'; '.join(problems)}", reason=reasons[0])
