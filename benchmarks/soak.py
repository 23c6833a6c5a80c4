"""Soak: mock plates through two worker processes while faults are injected at random.

    .venv/bin/python benchmarks/soak.py --minutes 4

Needs the local RabbitMQ and MariaDB (as the test suite does). Creates a database of its own
and queues of its own, puts a TCP proxy in front of the broker and one in front of MariaDB
for the workers, starts two ``chimp-worker run`` processes, publishes the plates' events
spread over the run, and every few seconds injects a fault at random:

- ``amqp-cut``: reset every worker connection to RabbitMQ (proxy);
- ``db-cut``: reset every worker connection to MariaDB (proxy);
- ``db-refuse``: MariaDB refuses every connection for 10-30 s (proxy; a restart or fail-over);
- ``sigkill``: SIGKILL one worker and restart it a second later, as systemd would;
- ``hostile-json``: every body that broke the decoder once (400 KB of nesting, a 5,000-digit
  id, NaN, a lone surrogate escape, a duplicate key, not JSON) on the events queue;
- ``duplicate-event``: one inspection's event published twice at once (both workers plan it).

Besides, one plate in four has a FIFO, a symbolic-link loop, a link to itself or a socket at
one image's path.

When the time is up it lets the workers drain, stops them with SIGTERM, and checks every
plate: each image exactly one result or recorded failure (the special files failed with
their own reason, every other image done), no duplicate or orphan rows, one results-ready per
inspection, every hostile body dead-lettered with its reason and nothing else dead-lettered,
no work reported stalled, every worker gone within its grace period after SIGTERM. It prints
messages processed, images per second, faults survived, lost, duplicated and wedged; exit
status 1 if anything was lost, doubled or wedged. Results-ready is at least once: a repeat is
reported (with who sent it), not failed. A benchmark, not a test: figures vary with the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.faults import (  # noqa: E402
    MARIADB_HOST,
    MARIADB_PORT,
    WorkerProcess,
    mariadb_admin,
    mariadb_url_for,
    replace_with_special_file,
)
from helpers.plates import small_plate  # noqa: E402
from helpers.rabbit import RabbitProbe  # noqa: E402
from helpers.tcp_proxy import TcpProxy  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from chimp_worker.analysis import AnalysisOptions  # noqa: E402
from chimp_worker.baseline import BaselineAnalyser  # noqa: E402
from chimp_worker.broker import HEADER_REASON, BrokerOptions, Publisher  # noqa: E402
from chimp_worker.config import Settings, load_settings  # noqa: E402
from chimp_worker.events import InspectionCompleted  # noqa: E402
from chimp_worker.images import FilesystemSource  # noqa: E402
from chimp_worker.ispyb import tables as t  # noqa: E402
from chimp_worker.ispyb.database import make_engine, make_session_factory  # noqa: E402
from chimp_worker.ispyb.schema import create_all  # noqa: E402
from chimp_worker.ispyb.worker_tables import (  # noqa: E402
    ChimpDetection,
    ChimpImageResult,
    ChimpInspection,
)
from chimp_worker.ispyb.writer import (  # noqa: E402
    POSITION_TYPE_DISPENSING,
    SOURCE_AUTO,
    result_digest,
)
from chimp_worker.mock_imager.plate import MockPlate  # noqa: E402

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
FAULTS = ("amqp-cut", "db-cut", "db-refuse", "sigkill", "hostile-json", "duplicate-event")
GRACE_PERIOD_S = 20
_HEAD = b'{"type": "inspection.completed", "version": 1, "containerInspectionId": '
# reason the worker must dead-letter it with -> a hostile body
HOSTILE_BODIES = {
    "event_too_deep": b"[" * 200_000 + b"]" * 200_000,
    "event_number_too_long": _HEAD + b"9" * 5000 + b"}",
    "event_not_finite": _HEAD + b"NaN}",
    "event_bad_unicode": _HEAD + b'1, "barcode": "\\ud800"}',
    "event_duplicate_key": _HEAD + b'1, "priority": 1, "priority": 2}',
    "event_not_json": b"{not json",
}
# what one plate in four has at one image's path -> the reason recorded for that image
SPECIAL_FILES = {
    "fifo": "image_not_a_file",
    "symlink_loop": "image_symlink_loop",
    "self_loop": "image_symlink_loop",
    "socket": "image_not_a_file",
}


@dataclass
class Soak:
    """Everything one soak run owns, so it can all be cleaned up."""

    args: argparse.Namespace
    database: str
    prefix: str
    image_root: Path
    amqp_proxy: TcpProxy
    db_proxy: TcpProxy
    plates: list[MockPlate] = field(default_factory=list)
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    retired: list[WorkerProcess] = field(default_factory=list)  # killed incarnations
    faults: Counter[str] = field(default_factory=Counter)
    published: dict[int, float] = field(default_factory=dict)  # inspection -> time
    special: dict[int, str] = field(default_factory=dict)  # image id -> expected reason
    hostile: Counter[str] = field(default_factory=Counter)  # reason -> bodies published
    refused_until: float | None = None  # the database proxy refuses until then

    @property
    def direct_url(self) -> str:
        return mariadb_url_for(self.database)

    def settings(self) -> Settings:
        return load_settings(
            database_url=self.direct_url,
            amqp_url=f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F",
            events_queue=f"{self.prefix}.events",
            work_queue=f"{self.prefix}.work",
            results_exchange=f"{self.prefix}.results",
            results_queue=f"{self.prefix}.results-ready",
            image_roots=[self.image_root],
            analyser="baseline",
        )

    def worker_env(self) -> dict[str, str]:
        settings = self.settings()
        return {
            "CHIMP_DATABASE_URL": mariadb_url_for(self.database, port=self.db_proxy.port),
            "CHIMP_DATABASE_CONNECT_ARGS": json.dumps(
                {"connect_timeout": 5, "read_timeout": 20, "write_timeout": 20}
            ),
            "CHIMP_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{self.amqp_proxy.port}/%2F",
            "CHIMP_AMQP_HEARTBEAT_S": "5",
            "CHIMP_EVENTS_QUEUE": settings.events_queue,
            "CHIMP_WORK_QUEUE": settings.work_queue,
            "CHIMP_RESULTS_EXCHANGE": settings.results_exchange,
            "CHIMP_RESULTS_QUEUE": settings.results_queue,
            "CHIMP_IMAGE_ROOTS": json.dumps([str(self.image_root)]),
            "CHIMP_ANALYSER": "baseline",
            "CHIMP_BASELINE_WRITES_TARGETS": "true",  # exercise every ISPyB table it writes
            "CHIMP_BATCH_SIZE": "2",
            "CHIMP_IMAGES_PER_WORK_ITEM": str(self.args.images_per_item),
            "CHIMP_RETRY_INITIAL_WAIT_S": "0.2",
            "CHIMP_RETRY_MAX_WAIT_S": "3",
            "CHIMP_PUBLISH_TIMEOUT_S": "10",
            "CHIMP_GRACE_PERIOD_S": str(GRACE_PERIOD_S),
        }

    def published_plates(self) -> list[MockPlate]:
        return [p for p in self.plates if p.latest.containerInspectionId in self.published]

    def start_worker(self, name: str) -> None:
        self.workers[name] = WorkerProcess(self.worker_env(), name=name).start()

    def all_records(self) -> list[dict[str, Any]]:
        return [record for worker in self.incarnations() for record in worker.records()]

    def incarnations(self) -> list[WorkerProcess]:
        return [*self.retired, *self.workers.values()]

    def save_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for number, worker in enumerate(self.incarnations()):
            (directory / f"{number:02d}-{worker.name}-{worker.pid}.log").write_text(
                worker.output() + "\n"
            )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(args: argparse.Namespace, scratch: Path) -> Soak:
    database = f"chimp_soak_{uuid.uuid4().hex[:8]}"
    admin = mariadb_admin()
    admin.cursor().execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    admin.close()
    soak = Soak(
        args=args,
        database=database,
        prefix=f"soak-{uuid.uuid4().hex[:8]}",
        image_root=(scratch / "images").resolve(),
        amqp_proxy=TcpProxy(AMQP_HOST, AMQP_PORT).start(),
        db_proxy=TcpProxy(MARIADB_HOST, MARIADB_PORT).start(),
    )
    create_all(soak.direct_url)
    log(f"database {database}, queues {soak.prefix}.*; creating {args.plates} plates")
    for number in range(args.plates):
        soak.plates.append(
            small_plate(
                soak.direct_url,
                soak.image_root,
                barcode=f"SOAK-{number:03d}",
                wells=args.wells,
                seed=number,
                flavour="vmxi" if number % 2 == 0 else "xchem",
            )
        )
    for number, plate in enumerate(soak.plates):
        if number % 4 != 1:
            continue
        kind = list(SPECIAL_FILES)[(number // 4) % len(SPECIAL_FILES)]
        image = plate.latest.images[number % len(plate.latest.images)]
        replace_with_special_file(Path(image.imageFullPath), kind)
        soak.special[image.blSampleImageId] = SPECIAL_FILES[kind]
    probe = RabbitProbe(soak.settings().amqp_url)
    probe.declare(soak.settings())
    probe.close()
    return soak


def inject(soak: Soak, rng: random.Random, bag: list[str], publisher: Publisher) -> None:
    """The next fault from a shuffled bag of every kind: random order, every kind injected."""
    if not bag:
        bag.extend(rng.sample(FAULTS, len(FAULTS)))
    fault = bag.pop()
    if fault == "db-refuse" and soak.refused_until is not None:
        fault = "db-cut"  # already refusing: cut instead
    soak.faults[fault] += 1
    detail = ""
    if fault == "amqp-cut":
        soak.amqp_proxy.cut()
    elif fault == "db-cut":
        soak.db_proxy.cut()
    elif fault == "db-refuse":
        seconds = rng.uniform(10, 30)
        soak.db_proxy.refuse()
        soak.refused_until = time.monotonic() + seconds
        detail = f" for {seconds:.0f} s"
    elif fault == "hostile-json":  # every kind at once
        probe = RabbitProbe(soak.settings().amqp_url)
        try:
            for reason, body in HOSTILE_BODIES.items():
                probe.publish_raw(soak.settings().events_queue, body)
                soak.hostile[reason] += 1
        finally:
            probe.close()
        detail = f" ({len(HOSTILE_BODIES)} bodies)"
    elif fault == "duplicate-event":
        inspection = max(soak.published, key=soak.published.__getitem__)  # the latest
        for _ in range(2):
            publisher.publish(InspectionCompleted(containerInspectionId=inspection))
        detail = f" (inspection {inspection})"
    else:
        name = rng.choice(sorted(soak.workers))
        victim = soak.workers.pop(name)
        victim.kill()
        soak.retired.append(victim)
        time.sleep(1.0)  # RestartSec
        soak.start_worker(name)
    log(f"fault: {fault}{detail}")


def restore_database(soak: Soak, *, now: float | None = None) -> None:
    """End a db-refuse once its time is up (or at once without ``now``)."""
    if soak.refused_until is not None and (now is None or now >= soak.refused_until):
        soak.db_proxy.restore()
        soak.refused_until = None
        log("database answers again")


def completed(soak: Soak, factory: Any) -> set[int]:
    with factory() as session:
        return set(
            session.scalars(
                select(ChimpInspection.containerInspectionId).where(ChimpInspection.state == "done")
            )
        )


def run(soak: Soak) -> tuple[float, float]:
    """Publish, inject, drain; returns (seconds from first event to last completion, total)."""
    args = soak.args
    rng = random.Random(args.seed)
    engine = make_engine(soak.direct_url)
    factory = make_session_factory(engine)
    for n in range(args.workers):
        soak.start_worker(f"w{n + 1}")
    for worker in soak.workers.values():
        worker.wait_for_log("broker_session_open", timeout_s=60)
    started = time.monotonic()
    duration = args.minutes * 60
    next_fault = started + rng.uniform(args.fault_min_s, args.fault_max_s)
    pending = list(soak.plates)
    bag: list[str] = []
    publisher = Publisher(BrokerOptions.from_settings(soak.settings()))
    last_completion = started
    done: set[int] = set()
    try:
        while True:
            now = time.monotonic()
            elapsed = now - started
            backlog = len(soak.published) - len(done)
            while pending and elapsed < duration and backlog < args.backlog:
                backlog += 1
                plate = pending.pop(0)
                inspection = plate.latest.containerInspectionId
                publisher.publish(InspectionCompleted(containerInspectionId=inspection))
                soak.published[inspection] = now
            restore_database(soak, now=now if elapsed < duration else None)
            if elapsed < duration and now >= next_fault and soak.published:
                inject(soak, rng, bag, publisher)
                next_fault = time.monotonic() + rng.uniform(args.fault_min_s, args.fault_max_s)
            newly = completed(soak, factory) - done
            if newly:
                done |= newly
                last_completion = time.monotonic()
                log(f"{len(done)}/{len(soak.published)} published plates complete")
            if len(done) == len(soak.published) and (elapsed >= duration or not pending):
                break
            if elapsed > duration + args.drain_s:
                log("drain time-out: some plates did not complete")
                break
            for name, worker in list(soak.workers.items()):
                if not worker.alive:  # a crash is a finding; systemd would restart it
                    log(f"worker {name} exited with {worker.returncode}:\n{worker.tail(20)}")
                    soak.faults["unexpected-exit"] += 1
                    soak.retired.append(soak.workers.pop(name))
                    soak.start_worker(name)
            time.sleep(0.5)
    finally:
        restore_database(soak)
        publisher.close()
        engine.dispose()
    return last_completion - started, time.monotonic() - started


@dataclass
class Audit:
    images: int = 0
    settled: int = 0
    failed: int = 0
    lost: int = 0  # images without a done/failed result
    wrong_results: int = 0  # stored digest differs from a fresh analysis
    duplicate_rows: int = 0
    orphan_positions: int = 0
    incomplete_inspections: int = 0
    wrong_failures: int = 0  # a special file not failed with its reason, or another image failed
    results_ready: Counter[int] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)  # x-chimp-reason -> count
    left_in_queues: int = 0


def audit(soak: Soak) -> Audit:
    """Count what the fault tests assert, across every plate, instead of stopping at the first."""
    report = Audit()
    engine = make_engine(soak.direct_url)
    factory = make_session_factory(engine)
    analyser = BaselineAnalyser(AnalysisOptions.from_settings(Settings(analyser="baseline")))
    source = FilesystemSource([soak.image_root])
    try:
        with factory() as session:
            for plate in soak.published_plates():
                ids = plate.latest.blSampleImageIds
                report.images += len(ids)
                rows = {
                    row.blSampleImageId: row
                    for row in session.scalars(
                        select(ChimpImageResult).where(ChimpImageResult.blSampleImageId.in_(ids))
                    )
                }
                settled = {i: r for i, r in rows.items() if r.state in ("done", "failed")}
                report.settled += len(settled)
                report.failed += sum(1 for r in settled.values() if r.state == "failed")
                for image_id, row in settled.items():
                    wanted = soak.special.get(image_id)
                    got = row.failureReason if row.state == "failed" else None
                    report.wrong_failures += int(got != wanted)
                report.lost += len(ids) - len(settled)
                inspection = session.get(ChimpInspection, plate.latest.containerInspectionId)
                if inspection is None or inspection.state != "done":
                    report.incomplete_inspections += 1
                scores = Counter(
                    session.scalars(
                        select(t.BLSampleImageHasAutoScoreClass.blSampleImageId).where(
                            t.BLSampleImageHasAutoScoreClass.blSampleImageId.in_(ids)
                        )
                    )
                )
                subsamples = Counter(
                    session.scalars(
                        select(t.BLSubSample.blSampleImageId)
                        .where(t.BLSubSample.blSampleImageId.in_(ids))
                        .where(t.BLSubSample.source == SOURCE_AUTO)
                    )
                )
                detections = Counter(
                    session.scalars(
                        select(ChimpDetection.blSampleImageId).where(
                            ChimpDetection.blSampleImageId.in_(ids)
                        )
                    )
                )
                dispensing = Counter(
                    session.scalars(
                        select(t.BLSamplePosition.blSampleId)
                        .where(t.BLSamplePosition.blSampleId.in_(plate.blSampleIds))
                        .where(t.BLSamplePosition.positionType == POSITION_TYPE_DISPENSING)
                    )
                )
                report.duplicate_rows += sum(max(0, n - 1) for n in dispensing.values())
                for image in plate.latest.images:
                    row = settled.get(image.blSampleImageId)
                    if row is None or row.state != "done":
                        continue
                    fresh = analyser.analyse(
                        [source.fetch(image.imageFullPath, image.blSampleImageId)]
                    )[0]
                    if row.resultDigest != result_digest(fresh):
                        report.wrong_results += 1
                    report.duplicate_rows += max(
                        0, scores[image.blSampleImageId] - len(fresh.probabilities or {})
                    )
                    report.duplicate_rows += max(
                        0, subsamples[image.blSampleImageId] - len(fresh.crystal_targets)
                    )
                    report.duplicate_rows += max(
                        0, detections[image.blSampleImageId] - len(fresh.detections)
                    )
            referenced = select(t.BLSubSample.positionId).where(
                t.BLSubSample.positionId.is_not(None)
            )
            report.orphan_positions = (
                session.scalar(
                    select(func.count())
                    .select_from(t.Position)
                    .where(~t.Position.positionId.in_(referenced))
                )
                or 0
            )
    finally:
        engine.dispose()
    settings = soak.settings()
    probe = RabbitProbe(settings.amqp_url)
    try:
        for message in probe.take_all(settings.results_queue):
            report.results_ready[message.json["containerInspectionId"]] += 1
        for queue in (settings.events_queue, settings.work_queue):
            for message in probe.take_all(f"dlq.{queue}"):
                reason = str(message.headers.get(HEADER_REASON, "x-death: delivery limit"))
                report.dead_letters[f"{queue.rsplit('.', 1)[-1]}: {reason}"] += 1
            report.left_in_queues += probe.count(queue)
    finally:
        probe.close()
    return report


def stop_workers(soak: Soak) -> tuple[dict[str, int], list[str]]:
    """SIGTERM every worker; one still running past the grace period + 15 s is wedged."""
    exits: dict[str, int] = {}
    overstayed: list[str] = []
    for name, worker in soak.workers.items():
        try:
            exits[name] = worker.stop(GRACE_PERIOD_S + 15)
        except AssertionError:
            overstayed.append(name)
            exits[name] = -9
        except subprocess.TimeoutExpired:
            overstayed.append(name)
            exits[name] = -9
    return exits, overstayed


def clean_up(soak: Soak) -> None:
    for worker in soak.workers.values():
        if worker.alive:
            worker.kill()
    soak.amqp_proxy.stop()
    soak.db_proxy.stop()
    probe = RabbitProbe(soak.settings().amqp_url)
    try:
        probe.delete(soak.settings())
    finally:
        probe.close()
    admin = mariadb_admin()
    admin.cursor().execute(f"DROP DATABASE IF EXISTS `{soak.database}`")
    admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="time faults are injected")
    parser.add_argument("--plates", type=int, default=200, help="at most; published as needed")
    parser.add_argument("--backlog", type=int, default=2, help="plates published ahead")
    parser.add_argument("--wells", type=int, default=3, help="wells per plate (2 drops each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images-per-item", type=int, default=2)
    parser.add_argument("--fault-min-s", type=float, default=8.0)
    parser.add_argument("--fault-max-s", type=float, default=20.0)
    parser.add_argument("--drain-s", type=float, default=180.0, help="time allowed after the run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-dir", type=Path, help="keep every worker's log lines here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="chimp-soak-") as scratch:
        soak = prepare(args, Path(scratch))
        try:
            active_s, total_s = run(soak)
            exits, overstayed = stop_workers(soak)
            records = soak.all_records()
            if args.log_dir:
                soak.save_logs(args.log_dir)
            report = audit(soak)
        finally:
            clean_up(soak)

    outcomes = Counter(r.get("outcome") for r in records if r.get("event") == "message_done")
    messages = sum(outcomes.values())
    expected = set(soak.published)
    ready_missing = sum(1 for i in expected if report.results_ready[i] == 0)
    ready_doubled = sum(n - 1 for n in report.results_ready.values() if n > 1)
    injected = sum(n for fault, n in soak.faults.items() if fault in FAULTS)
    duplicates = report.duplicate_rows + report.orphan_positions
    lost = report.lost + report.incomplete_inspections
    hostile_expected = Counter({f"events: {r}": n for r, n in soak.hostile.items()})
    unexpected_dead = report.dead_letters - hostile_expected
    hostile_missing = hostile_expected - report.dead_letters
    stalled = sum(1 for r in records if r.get("event") == "work_stalled")
    wedged = len(overstayed) + stalled
    special_published = sum(
        1
        for plate in soak.published_plates()
        for i in plate.latest.blSampleImageIds
        if i in soak.special
    )
    held = Counter(r.get("event") for r in records if r.get("event") in HOLD_EVENTS)
    bad = (
        lost
        or duplicates
        or report.wrong_results
        or report.wrong_failures
        or ready_missing
        or sum(unexpected_dead.values())
        or sum(hostile_missing.values())
        or report.left_in_queues
        or wedged
        or any(exits.values())
    )
    survived = 0 if bad else injected
    print()
    print(
        f"soak: {args.minutes:g} min of faults, {len(soak.published)} plates, "
        f"{report.images} images, {args.workers} workers"
    )
    by_outcome = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
    print(f"messages processed     {messages} ({by_outcome})")
    print(
        f"images settled         {report.settled} ({report.failed} recorded failed: "
        f"{special_published} special files expected, {report.wrong_failures} wrong)"
    )
    print(
        f"images/s               {report.settled / active_s:.2f} "
        f"(first event to last completion, {active_s:.0f} s; run {total_s:.0f} s)"
    )
    print(
        f"faults injected        {injected} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(soak.faults.items()))})"
    )
    print(f"faults survived        {survived}")
    print(
        "database outages       " + ", ".join(f"{event} {n}" for event, n in sorted(held.items()))
    )
    print(
        f"lost                   {lost} ({report.lost} images without a result, "
        f"{report.incomplete_inspections} inspections incomplete)"
    )
    print(
        f"duplicated             {duplicates} ({report.duplicate_rows} duplicate rows, "
        f"{report.orphan_positions} orphan Position)"
    )
    print(
        f"wedged                 {wedged} ({len(overstayed)} workers past the grace period "
        f"after SIGTERM, {stalled} stalled-work reports)"
    )
    print(f"wrong results          {report.wrong_results}")
    print(f"results-ready missing  {ready_missing}")
    print(f"results-ready repeated {ready_doubled} (at least once: allowed, listed below)")
    print(
        f"dead-lettered          {sum(report.dead_letters.values())} "
        f"({sum(hostile_expected.values())} hostile bodies published; "
        f"{sum(unexpected_dead.values())} unexpected, {sum(hostile_missing.values())} missing)"
    )
    for reason, count in sorted(report.dead_letters.items()):
        print(f"  {count} x {reason}")
    print(f"messages left          {report.left_in_queues}")
    print(f"worker exit on SIGTERM {exits}")
    for inspection, count in sorted(report.results_ready.items()):
        if count > 1:  # at least once: show who announced it, and why
            announced = [
                {
                    key: r.get(key)
                    for key in ("timestamp", "message_id", "redelivered", "completed_here")
                }
                for r in records
                if r.get("event") == "results_ready_published"
                and r.get("inspection_id") == inspection
            ]
            print(f"  results-ready x{count} for inspection {inspection}: {announced}")
    return 1 if bad else 0


HOLD_EVENTS = (
    "message_held_for_database",
    "consumers_paused",
    "consumers_resumed",
    "database_back",
    "message_requeued",
)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
