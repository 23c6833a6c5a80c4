"""The messages on the queues: a versioned JSON schema, frozen dataclasses, strict decoding.

Every body is one JSON object ``{"type": ..., "version": N, ...fields}``; field names are
ISPyB's own (camelCase) so a message reads like the rows it names. Decoding is strict: an
unknown type, an unsupported version, a missing, mistyped or unknown field, or a body that is
not UTF-8 JSON raises ``EventError`` with a specific ``reason`` -- the consumer dead-letters
it with that reason instead of requeueing it for ever. Hostile JSON is refused the same way,
before it can cost more than one pass of the parser: nesting deeper than an event needs,
numbers longer than 20 characters (read unparsed), NaN and infinities, duplicate keys, lone
surrogate escapes; whatever else the decoder raises becomes ``event_undecodable``. Any change
to a type's fields bumps its version. ``encode()`` validates too, so no process publishes
what a worker would reject.

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
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config

from chimp_worker.errors import EventError

SCHEMA_VERSION = 1  # inspection.completed and work.item
RESULTS_READY_VERSION = 2  # 2: containerId, barcode and newHits added
MAX_EVENT_BYTES = 1024 * 1024  # a 288-image plate's ids fit in about 3 KiB
MAX_IMAGES_PER_EVENT = 10_000
MAX_EVENT_DEPTH = 8  # an event is an object holding at most a list of ids
MAX_NUMBER_CHARS = 20  # a 64-bit integer and its sign; longer numbers are refused unread
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
_ADAPTERS: dict[str, TypeAdapter[Event]] = {
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
    """Parse and validate one message body; raises ``EventError`` naming what is wrong.

    Never raises anything else: a body that makes the parser or the validator fail in a way
    not foreseen here is still the body's fault (``event_undecodable``).
    """
    try:
        return _decode(body)
    except EventError:
        raise
    except Exception as exc:  # anything the decoder raises: dead-letter, never requeue
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise EventError(f"cannot decode the body ({detail})", reason="event_undecodable") from None


def _decode(body: bytes) -> Event:
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
    data = _parse_json(text)
    if not isinstance(data, dict):
        raise EventError(
            f"body must be a JSON object, got {type(data).__name__}", reason="event_not_object"
        )
    _check_shape(data)
    event_type = data.pop("type", None)
    if event_type is None:
        raise EventError("no 'type' field", reason="event_missing_type")
    if event_type not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise EventError(
            f"unknown event type {event_type!r:.80} (known: {known})", reason="event_unknown_type"
        )
    version = data.pop("version", None)
    readable = READABLE_VERSIONS[event_type]
    if type(version) is not int or version not in readable:
        shown = ", ".join(str(v) for v in sorted(readable))
        raise EventError(
            f"{event_type}: unsupported version {version!r:.40} (this worker reads {shown})",
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


# A JSON string (escapes included) and anything that is not a bracket, for the depth pre-scan.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def _nesting_depth(text: str) -> int:
    """How deep arrays and objects nest, brackets inside strings not counted.

    Checked before parsing: letting ``json.loads`` hit Python's recursion limit on a body of
    ``[[[...`` raises ``RecursionError`` from C code, which on CPython 3.11 can leave the
    interpreter's recursion bookkeeping wrong for later ``compile`` calls."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_EVENT_DEPTH:
                break
    return deepest


def _parse_json(text: str) -> Any:
    """``json.loads`` with hooks that refuse what an event never holds."""
    if _nesting_depth(text) > MAX_EVENT_DEPTH:
        raise EventError(f"nested more than {MAX_EVENT_DEPTH} levels deep", reason="event_too_deep")
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except json.JSONDecodeError as exc:
        raise EventError(f"body is not JSON: {exc}", reason="event_not_json") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows a key twice and Python keeps the last: refuse, as the two readings differ."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise EventError(f"key {key!r:.60} appears twice", reason="event_duplicate_key")
        data[key] = value
    return data


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:  # int() of thousands of digits costs, or raises
        raise EventError(
            f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS} are read)",
            reason="event_number_too_long",
        )
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 2 * MAX_NUMBER_CHARS:
        raise EventError(
            f"a number of {len(text)} characters (at most {2 * MAX_NUMBER_CHARS} are read)",
            reason="event_number_too_long",
        )
    value = float(text)
    if not math.isfinite(value):
        raise EventError(f"number {text} is not finite", reason="event_not_finite")
    return value


def _parse_constant(name: str) -> float:
    raise EventError(f"{name} is not a JSON number", reason="event_not_finite")


def _check_shape(data: dict[str, Any]) -> None:
    """Depth at most ``MAX_EVENT_DEPTH``; every string (keys too) encodable as UTF-8, which a
    lone surrogate escape such as ``"\\ud800"`` is not (no database or log could store it)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_EVENT_DEPTH:
            raise EventError(
                f"nested more than {MAX_EVENT_DEPTH} levels deep", reason="event_too_deep"
            )
        if isinstance(value, dict):
            for key in value:
                _check_text(key)
            stack.extend((item, depth + 1) for item in value.values())
        else:
            stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EventError(
            f"a string holds a lone surrogate ({exc.reason} at {exc.start})",
            reason="event_bad_unicode",
        ) from None


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
    for error in exc.errors(include_url=False)[:10]:
        field = ".".join(str(part) for part in error["loc"]) or event_type
        reasons.append(_REASON_BY_ERROR.get(error["type"], "event_bad_value"))
        shown = "" if error["type"] == "missing" else f" (got {_shown(error.get('input'))})"
        problems.append(f"{field}: {error['msg']}{shown}")
    return EventError(f"{event_type}: {'; '.join(problems)}", reason=reasons[0])


def _shown(value: Any) -> str:
    """At most 80 characters of a bad value, for the dead-letter reason."""
    if isinstance(value, list | dict) and len(value) > 10:
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{value!r:.80}"
