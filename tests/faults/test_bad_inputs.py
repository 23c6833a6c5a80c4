"""What arrives can be wrong: damaged image files, malformed events, the same event twice and to
two workers at once. Bad images are recorded failed with their reason and the plate goes on;
bad events are dead-lettered at once with theirs; duplicates change nothing."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import (
    FaultWorld,
    WorkerPool,
    mariadb_url_for,
    replace_with_special_file,
    wait_until,
)
from helpers.ispyb_rows import snapshot

from chimp_worker.analysis import Analyser
from chimp_worker.broker import HEADER_REASON, HEADER_SOURCE_QUEUE
from chimp_worker.events import MAX_EVENT_BYTES, WorkItem
from chimp_worker.ispyb import tables as t

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(width: int, height: int, pixels: bytes) -> bytes:
    """An 8-bit greyscale PNG written by hand (Pillow will not write the shapes we need)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(pixels, 9))
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb() -> bytes:
    """80 KB that inflate to 81 megapixels (81 MB): over the worker's 40 Mpx pixel limit."""
    side = 9000
    return png(side, side, b"\x00" * ((side + 1) * side))


# drop location -> mock-imager file fault, or a file this test writes, and the recorded reason
MOCK_FAULTS = {1: "missing", 2: "truncated", 3: "corrupt", 4: "empty", 5: "not_image"}
WRITTEN_FAULTS = {6: ("zero_by_zero", "image_corrupt"), 7: ("bomb", "image_too_large")}
EXPECTED_REASONS = {
    1: "image_missing",
    2: "image_truncated",
    3: "image_corrupt",
    4: "image_corrupt",
    5: "image_unsupported",
    6: "image_corrupt",
    7: "image_too_large",
}


@pytest.fixture
def damaged_world(
    faults_database: str, amqp_url: str, queue_prefix: str, tmp_path: Path, workers: WorkerPool
) -> Iterator[FaultWorld]:
    world = FaultWorld.create(
        mariadb_url_for(faults_database),
        tmp_path / "images",
        amqp_url,
        queue_prefix,
        wells=5,
        faults=MOCK_FAULTS,
    )
    world.pool = workers
    contents = {"zero_by_zero": png(0, 0, b""), "bomb": decompression_bomb()}
    for location, (kind, _reason) in WRITTEN_FAULTS.items():
        image = next(i for i in world.plate.latest.images if i.location == location)
        Path(image.imageFullPath).write_bytes(contents[kind])
    yield world
    world.close()


def test_damaged_image_files_are_recorded_failed_with_their_reason_and_the_plate_completes(
    damaged_world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    world = damaged_world
    worker = workers.start(world.worker_env(), name="w1")
    world.publish_inspection()
    world.wait_until_complete()
    assert worker.alive
    assert worker.stop() == 0
    expected = {
        image.blSampleImageId: EXPECTED_REASONS[image.location]
        for image in world.plate.latest.images
        if image.location in EXPECTED_REASONS
    }
    report = world.check(analyser, expected_failures=expected)
    assert (report.images, report.done, len(report.failed)) == (10, 3, 7)
    logged = {r["blsample_image_id"]: r["reason"] for r in worker.events("image_failed")}
    assert logged == expected, "one clear log line per bad image, with its reason"


# drop location -> what is at its path, and the recorded reason
SPECIAL_FILES = {
    1: ("fifo", "image_not_a_file"),
    2: ("symlink_loop", "image_symlink_loop"),
    3: ("self_loop", "image_symlink_loop"),
    4: ("socket", "image_not_a_file"),
    5: ("directory", "image_not_a_file"),
    6: ("name_too_long", "image_path_too_long"),
}  # a device is tested in tests/test_images.py (/dev/null: making one here would need root)


def test_special_files_at_image_paths_are_each_that_images_failure_and_the_plate_completes(
    faults_database: str,
    amqp_url: str,
    queue_prefix: str,
    tmp_path: Path,
    workers: WorkerPool,
    analyser: Analyser,
) -> None:
    """A FIFO once wedged a worker in open(); a symlink loop failed a whole work item (six
    deliveries, no failure recorded, seven good images never processed)."""
    world = FaultWorld.create(
        mariadb_url_for(faults_database), tmp_path / "images", amqp_url, queue_prefix, wells=5
    )
    world.pool = workers
    try:
        expected = {}
        for image in world.plate.latest.images:
            if image.location not in SPECIAL_FILES:
                continue
            kind, reason = SPECIAL_FILES[image.location]
            expected[image.blSampleImageId] = reason
            path = Path(image.imageFullPath)
            if kind == "name_too_long":  # 264 bytes in one name, 130 characters in ISPyB
                long_path = str(path.with_name("\u00e9" * 130 + ".jpg"))
                with world.factory.begin() as session:
                    row = session.get(t.BLSampleImage, image.blSampleImageId)
                    assert row is not None
                    row.imageFullPath = long_path
            else:
                replace_with_special_file(path, kind)
        worker = workers.start(world.worker_env(), name="w1")
        world.publish_inspection()
        world.wait_until_complete(60)
        assert worker.alive
        assert worker.stop() == 0
        report = world.check(analyser, expected_failures=expected)
        assert (report.images, report.done, len(report.failed)) == (10, 4, 6)
        assert [r for r in worker.events("message_done") if r["outcome"] != "acked"] == []
        assert worker.events("message_failed_unexpectedly") == []
    finally:
        world.close()


def raw_event(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_malformed_events_are_dead_lettered_at_once_with_their_reason_and_good_work_goes_on(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    completed = {"type": "inspection.completed", "version": 1}
    bad_events = {
        "event_not_json": b"{not json",
        "event_not_utf8": b"\xff\xfe{}",
        "event_wrong_type": raw_event(**completed, containerInspectionId="12"),
        "event_unsupported_version": raw_event(
            **{**completed, "version": 99}, containerInspectionId=world.inspection_id
        ),
        "event_too_large": raw_event(
            **completed, containerInspectionId=world.inspection_id, barcode="x" * MAX_EVENT_BYTES
        ),
        "event_wrong_queue": WorkItem(
            containerInspectionId=world.inspection_id, blSampleImageIds=world.image_ids[:1]
        ).encode(),
        "unknown_inspection": raw_event(**completed, containerInspectionId=987_654_321),
    }
    bad_work = {
        "event_bad_value": raw_event(
            type="work.item",
            version=1,
            containerInspectionId=world.inspection_id,
            blSampleImageIds=[],
        ),
    }
    world.declare()
    for body in bad_events.values():
        world.probe.publish_raw(world.events_queue, body)
    for body in bad_work.values():
        world.probe.publish_raw(world.work_queue, body)
    worker = workers.start(world.worker_env(), name="w1")
    world.publish_inspection()
    world.wait_until_complete()
    wait_until(
        lambda: world.probe.count(f"dlq.{world.events_queue}") == len(bad_events),
        30,
        "every bad event in the DLQ",
    )
    assert worker.alive
    assert worker.stop() == 0
    world.check(
        analyser,
        dead_letters={
            f"dlq.{world.events_queue}": len(bad_events),
            f"dlq.{world.work_queue}": len(bad_work),
        },
    )
    dead = world.probe.take_all(f"dlq.{world.events_queue}")
    assert {m.headers[HEADER_REASON]: m.body for m in dead} == bad_events
    assert {m.headers[HEADER_SOURCE_QUEUE] for m in dead} == {world.events_queue}
    assert all(m.headers.get("x-delivery-count", 0) == 0 for m in dead), "never requeued"
    [dead_work] = world.probe.take_all(f"dlq.{world.work_queue}")
    assert dead_work.headers[HEADER_REASON] == "event_bad_value"
    logged = sorted(r["reason"] for r in worker.events("message_dead_lettered"))
    assert logged == sorted([*bad_events, *bad_work]), "one log line per bad message"


def hostile_bodies(inspection_id: int) -> dict[str, bytes]:
    """Bodies that broke the decoder in an attack (RecursionError, ValueError, six deliveries
    each and a dead letter without a reason): reason -> body."""
    head = b'{"type": "inspection.completed", "version": 1, "containerInspectionId": '
    return {
        "event_too_deep": b"[" * 200_000 + b"]" * 200_000,  # 400 KB
        "event_number_too_long": head + b"9" * 5000 + b"}",
        "event_not_finite": head + b"NaN}",
        "event_bad_unicode": head + str(inspection_id).encode() + b', "barcode": "\\ud800"}',
        "event_duplicate_key": head + str(inspection_id).encode() + b', "priority": 1'
        b', "priority": 2}',
    }


def test_hostile_json_is_dead_lettered_at_once_with_its_reason_and_the_worker_goes_on(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    hostile = hostile_bodies(world.inspection_id)
    world.declare()
    for body in hostile.values():
        world.probe.publish_raw(world.events_queue, body)
    worker = workers.start(world.worker_env(), name="w1")
    world.publish_inspection()
    world.wait_until_complete()
    wait_until(
        lambda: world.probe.count(f"dlq.{world.events_queue}") == len(hostile),
        30,
        "every hostile event in the DLQ",
    )
    assert worker.alive
    assert worker.stop() == 0
    world.check(analyser, dead_letters={f"dlq.{world.events_queue}": len(hostile)})
    dead = world.probe.take_all(f"dlq.{world.events_queue}")
    assert {m.headers[HEADER_REASON]: m.body for m in dead} == hostile
    assert all(m.headers.get("x-delivery-count", 0) == 0 for m in dead), "never requeued"
    assert not worker.events("message_failed_unexpectedly")
    logged = sorted(r["reason"] for r in worker.events("message_dead_lettered"))
    assert logged == sorted(hostile), "one log line per hostile message"


def test_the_same_event_twice_to_two_workers_at_once_completes_the_plate_exactly_once(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    # Each worker holds its event (prefetch 1) for 2 s after planning it, so the broker must
    # hand the duplicate to the other worker: both plan the same inspection at the same time.
    hooks = world.hooks(plan_pause_s=2)
    pair = [workers.start(world.worker_env(), name=f"w{n}", hooks=hooks) for n in (1, 2)]
    for worker in pair:
        worker.wait_for_log("broker_session_open")
    world.publish_inspection(times=2)
    world.wait_until_complete()
    wait_until(
        lambda: sum(len(w.events("inspection_planned")) for w in pair) == 2, 30, "both planned"
    )
    assert [len(w.events("inspection_planned")) for w in pair] == [1, 1], "one event each"
    wait_until(lambda: world.queue_counts()[world.work_queue] == 0, 30, "the work to drain")
    # The completer writes the drops' time course after the completion commit, then announces.
    wait_until(world.announced, 30, "results-ready to be announced")
    first = snapshot(world.factory)
    world.check(analyser)

    world.publish_inspection()  # and once more, after completion
    wait_until(
        lambda: sum(len(w.events("inspection_planned")) for w in pair) == 3, 30, "third event"
    )
    for worker in pair:
        assert worker.alive
        assert worker.stop() == 0
    assert snapshot(world.factory) == first, "a repeated event changed rows"
    assert world.results_ready() == [], "no second results-ready"
