"""Fault injection against real worker processes: start, kill and restart ``chimp-worker run``
the way systemd would, and prove afterwards that nothing was lost and nothing doubled.

Used by tests/faults, tests/security and benchmarks/soak.py.

    world = FaultWorld.create(database_url, image_root, amqp_url, prefix, wells=3)
    worker = WorkerProcess(world.worker_env(), name="w1").start()
    world.publish_inspection()
    ...  # inject a fault
    world.wait_until_complete()
    assert worker.stop() == 0
    world.check()   # every image one result or failure, no duplicates, one results-ready
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.plates import small_plate
from helpers.rabbit import QueuedMessage, RabbitProbe
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import Analyser
from chimp_worker.broker import BrokerOptions, Publisher
from chimp_worker.config import Settings, load_settings
from chimp_worker.events import InspectionCompleted
from chimp_worker.images import FilesystemSource
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.worker_tables import (
    ChimpDetection,
    ChimpImageModel,
    ChimpImageResult,
    ChimpInspection,
)
from chimp_worker.ispyb.writer import POSITION_TYPE_DISPENSING, SOURCE_AUTO, result_digest
from chimp_worker.mock_imager.plate import MockPlate

REPO = Path(__file__).resolve().parents[2]
HOOKED_WORKER = Path(__file__).resolve().with_name("hooked_worker.py")

MARIADB_HOST = os.environ.get("CHIMP_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("CHIMP_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("CHIMP_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("CHIMP_TEST_MARIADB_PASSWORD", "")


def require_mariadb() -> None:
    """Fail (never skip) when the MariaDB server is not listening."""
    import pytest

    try:
        socket.create_connection((MARIADB_HOST, MARIADB_PORT), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"MariaDB is not reachable at {MARIADB_HOST}:{MARIADB_PORT}: {exc}")


def mariadb_admin() -> Any:
    """A root (admin) MySQLdb connection to the test server, autocommit on."""
    import MySQLdb

    connection = MySQLdb.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, passwd=MARIADB_PASSWORD
    )
    connection.autocommit(True)
    return connection


def mariadb_url_for(
    database: str, *, port: int | None = None, user: str | None = None, password: str | None = None
) -> str:
    user = user or MARIADB_USER
    secret = MARIADB_PASSWORD if password is None else password
    auth = f"{user}:{secret}" if secret else user
    return (
        f"mysql+mysqldb://{auth}@{MARIADB_HOST}:{port or MARIADB_PORT}/{database}?charset=utf8mb4"
    )


# --- worker processes --------------------------------------------------------------------------


class WorkerProcess:
    """One ``chimp-worker run`` process; its JSON log lines are collected as they arrive.

    ``hooks`` (``FAULT_HOOK_*`` variables, see hooked_worker.py) run it through the hook
    wrapper; without hooks it is the plain ``python -m chimp_worker run``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *args: str,
        name: str,
        hooks: Mapping[str, str] | None = None,
    ) -> None:
        self.env = dict(env)
        self.args = args
        self.name = name
        self.hooks = dict(hooks or {})
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> WorkerProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CHIMP_")}
        env.update(self.env)
        env.update(self.hooks)
        env.setdefault("CHIMP_LOG_FORMAT", "json")
        env["PYTHONUNBUFFERED"] = "1"
        if self.hooks:
            command = [sys.executable, str(HOOKED_WORKER), "run", *self.args]
        else:
            command = [sys.executable, "-m", "chimp_worker", "run", *self.args]
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a ^C in the test runner does not reach it
        )
        self._reader = threading.Thread(target=self._read, name=f"log-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (others, e.g. stdlib warnings, are skipped)."""
        with self._lock:
            lines = list(self.lines)
        records = []
        for line in lines:
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def events(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.records() if record.get("event") == name]

    def wait_for_log(self, name: str, timeout_s: float = 30.0, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log record with event ``name``; fails if the process dies first."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found[count - 1]
            if not self.alive:
                self._join_reader()
                found = self.events(name)
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(
                    f"worker {self.name} exited ({self.returncode}) before logging {name!r}:\n"
                    + self.tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name} logged no {name!r} within {timeout_s}s:\n" + self.tail()
                )
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "\n".join(self.lines[-lines:])

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL: no clean-up of any kind, as with the OOM killer or a power cut."""
        assert self.process is not None
        if self.alive:
            self.process.kill()
        code = self.process.wait(30)
        self._join_reader()
        return code

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (systemd stop) and the exit status; SIGKILL if it overstays ``timeout_s``."""
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            self._join_reader()
            raise AssertionError(
                f"worker {self.name} ignored SIGTERM for {timeout_s}s:\n" + self.tail()
            ) from None
        self._join_reader()
        return code

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout_s)
        self._join_reader()
        return code

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10)


@dataclass
class WorkerPool:
    """Every worker a test starts, so each one is gone when the test ends, pass or fail."""

    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, env: Mapping[str, str], *args: str, name: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(env, *args, name=name, **options).start()
        self.started.append(worker)
        return worker

    def clean_up(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.kill()


class HookEvents:
    """The event file the hooked workers append to: ``<pid> <event> <detail>`` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[int, str, str]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            pid, event, *detail = line.split(" ", 2)
            entries.append((int(pid), event, detail[0] if detail else ""))
        return entries

    def wait_for(
        self,
        event: str,
        *,
        worker: WorkerProcess | None = None,
        count: int = 1,
        timeout_s: float = 30.0,
    ) -> tuple[int, str, str]:
        """The ``count``-th ``event`` (of ``worker``'s process if given)."""
        pid = None if worker is None else worker.pid
        deadline = time.monotonic() + timeout_s
        while True:
            found = [
                entry
                for entry in self.lines()
                if entry[1] == event and (pid is None or entry[0] == pid)
            ]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline or (worker is not None and not worker.alive):
                tail = "" if worker is None else f" from {worker.name}:\n{worker.tail()}"
                raise AssertionError(f"no {event!r} hook event within {timeout_s}s{tail}")
            time.sleep(0.02)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


# --- the world a fault test runs in ---------------------------------------------------------


@dataclass
class FaultWorld:
    """A mock plate in MariaDB, this test's own queues, and the settings workers get."""

    database_url: str  # what the test itself uses (direct)
    amqp_url: str
    prefix: str
    image_root: Path
    plate: MockPlate
    factory: sessionmaker[Session]
    probe: RabbitProbe
    hook_events: HookEvents
    delivery_limit: int = 5  # set before the first declare: queues must match every worker
    pool: WorkerPool | None = None  # whose logs a time-out shows

    @classmethod
    def create(
        cls,
        database_url: str,
        image_root: Path,
        amqp_url: str,
        prefix: str,
        *,
        wells: int = 2,
        **plate_options: Any,
    ) -> FaultWorld:
        plate = small_plate(database_url, image_root, barcode=prefix, wells=wells, **plate_options)
        engine = make_engine(database_url)
        world = cls(
            database_url=database_url,
            amqp_url=amqp_url,
            prefix=prefix,
            image_root=image_root.resolve(),
            plate=plate,
            factory=make_session_factory(engine),
            probe=RabbitProbe(amqp_url),
            hook_events=HookEvents(image_root.parent / f"{prefix}-hooks.log"),
        )
        return world

    # names and settings --------------------------------------------------------------------

    @property
    def events_queue(self) -> str:
        return f"{self.prefix}.events"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.work"

    @property
    def results_queue(self) -> str:
        return f"{self.prefix}.results-ready"

    @property
    def inspection_id(self) -> int:
        return self.plate.latest.containerInspectionId

    @property
    def image_ids(self) -> tuple[int, ...]:
        return self.plate.latest.blSampleImageIds

    def worker_env(self, **overrides: str | int | float) -> dict[str, str]:
        """CHIMP_* variables for a worker process: this plate, these queues, short timeouts."""
        env = {
            "CHIMP_DATABASE_URL": self.database_url,
            "CHIMP_AMQP_URL": self.amqp_url,
            "CHIMP_EVENTS_QUEUE": self.events_queue,
            "CHIMP_WORK_QUEUE": self.work_queue,
            "CHIMP_RESULTS_EXCHANGE": f"{self.prefix}.results",
            "CHIMP_RESULTS_QUEUE": self.results_queue,
            "CHIMP_IMAGE_ROOTS": json.dumps([str(self.image_root)]),
            "CHIMP_ANALYSER": "baseline",
            "CHIMP_BASELINE_WRITES_TARGETS": "true",  # exercise every ISPyB table it writes
            "CHIMP_BATCH_SIZE": "2",
            "CHIMP_IMAGES_PER_WORK_ITEM": "2",
            "CHIMP_RETRY_INITIAL_WAIT_S": "0.2",
            "CHIMP_RETRY_MAX_WAIT_S": "2",
            "CHIMP_PUBLISH_TIMEOUT_S": "10",
            "CHIMP_GRACE_PERIOD_S": "20",
            "CHIMP_INSPECTION_VISIBILITY_RETRIES": "1",
            "CHIMP_TORCH_THREADS": "1",
            "CHIMP_DELIVERY_LIMIT": str(self.delivery_limit),
        }
        env.update({f"CHIMP_{key.upper()}": str(value) for key, value in overrides.items()})
        return env

    def hooks(self, **values: str | float | int) -> dict[str, str]:
        """FAULT_HOOK_* variables for the hooked worker, writing to this test's event file."""
        hooks = {"FAULT_HOOK_EVENTS": str(self.hook_events.path)}
        hooks.update({f"FAULT_HOOK_{key.upper()}": str(value) for key, value in values.items()})
        return hooks

    def settings(self, **overrides: Any) -> Settings:
        """In-process settings equal to a worker's (used to declare queues and re-analyse)."""
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "amqp_url": self.amqp_url,
            "events_queue": self.events_queue,
            "work_queue": self.work_queue,
            "results_exchange": f"{self.prefix}.results",
            "results_queue": self.results_queue,
            "image_roots": [self.image_root],
            "analyser": "baseline",
            "delivery_limit": self.delivery_limit,
        }
        values.update(overrides)
        return load_settings(**values)

    # broker ---------------------------------------------------------------------------------

    def declare(self) -> None:
        """The workers' queues, so raw messages published before any worker are kept."""
        self.probe.declare(self.settings())

    def publish_inspection(self, times: int = 1) -> None:
        with Publisher(BrokerOptions.from_settings(self.settings())) as publisher:
            for _ in range(times):
                publisher.publish(InspectionCompleted(containerInspectionId=self.inspection_id))

    def results_ready(self) -> list[QueuedMessage]:
        """Take every results-ready message off this test's results queue."""
        return self.probe.take_all(self.results_queue)

    def queue_counts(self) -> dict[str, int]:
        names = (self.events_queue, self.work_queue)
        counts = {name: self.probe.count(name) for name in names}
        counts |= {f"dlq.{name}": self.probe.count(f"dlq.{name}") for name in names}
        return counts

    def close(self) -> None:
        try:
            self.probe.delete(self.settings())
        finally:
            self.probe.close()
            self.factory.kw["bind"].dispose()

    # database -------------------------------------------------------------------------------

    def inspection_state(self) -> str | None:
        with self.factory() as session:
            row = session.get(ChimpInspection, self.inspection_id)
            return None if row is None else row.state

    def announced(self) -> bool:
        """Results-ready confirmed by the broker (the time course is written before that)."""
        with self.factory() as session:
            row = session.get(ChimpInspection, self.inspection_id)
            return row is not None and row.resultsPublishedAt is not None

    def settled_images(self) -> int:
        """Images with a done or failed result."""
        with self.factory() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(ChimpImageResult)
                    .where(ChimpImageResult.containerInspectionId == self.inspection_id)
                    .where(ChimpImageResult.state.in_(("done", "failed")))
                )
                or 0
            )

    def wait_until_complete(self, timeout_s: float = 90.0, *watch: WorkerProcess) -> None:
        """Wait for the completion; on time-out, show what the ``watch``ed workers logged."""
        try:
            wait_until(
                lambda: self.inspection_state() == "done", timeout_s, "the inspection to complete"
            )
        except AssertionError as error:
            shown = watch or (self.pool.started if self.pool else ())
            tails = "".join(f"\n--- {w.name}:\n{w.tail()}" for w in shown)
            raise AssertionError(f"{error}{tails}") from None

    def check(
        self,
        analyser: Analyser,
        *,
        expected_failures: Mapping[int, str] | None = None,
        results_ready: int = 1,
        dead_letters: Mapping[str, int] | None = None,
    ) -> PlateCheck:
        """Assert the invariants every fault must leave intact; returns what it counted."""
        report = check_plate(self, analyser, expected_failures or {})
        ready = [
            m for m in self.results_ready() if m.json["containerInspectionId"] == self.inspection_id
        ]
        assert len(ready) == results_ready, (
            f"{len(ready)} results-ready messages, expected {results_ready}"
        )
        counts = self.queue_counts()
        expected_counts = {name: 0 for name in counts} | dict(dead_letters or {})
        assert counts == expected_counts, f"queues {counts}, expected {expected_counts}"
        report.results_ready = len(ready)
        return report


@dataclass
class PlateCheck:
    images: int
    done: int
    failed: dict[int, str]
    score_rows: int
    subsamples: int
    positions: int
    dispensing_positions: int
    detections: int
    results_ready: int = 0


def expected_analyses(
    world: FaultWorld, analyser: Analyser, image_ids: Sequence[int]
) -> dict[int, Any]:
    """What ``analyser`` makes of each image file now, computed in the test process."""
    source = FilesystemSource([world.image_root])
    expected = {}
    for image_id in image_ids:
        image = world.plate.image(image_id)
        expected[image_id] = analyser.analyse([source.fetch(image.imageFullPath, image_id)])[0]
    return expected


def check_plate(
    world: FaultWorld, analyser: Analyser, expected_failures: Mapping[int, str]
) -> PlateCheck:
    """Every image exactly one result (equal to a fresh analysis) or one recorded failure with
    the expected reason; no duplicate or orphan ISPyB rows; the inspection done exactly once."""
    image_ids = world.image_ids
    sample_of = {image.blSampleImageId: image.blSampleId for image in world.plate.latest.images}
    with world.factory() as session:
        results = {
            row.blSampleImageId: row
            for row in session.scalars(
                select(ChimpImageResult).where(ChimpImageResult.blSampleImageId.in_(image_ids))
            )
        }
        assert set(results) == set(image_ids), "every image has its one chimp_image_result row"
        failed = {i: r.failureReason for i, r in results.items() if r.state == "failed"}
        states = Counter(r.state for r in results.values())
        assert failed == dict(expected_failures), f"failures {failed}, expected {expected_failures}"
        assert states["pending"] == 0, f"images left pending: {states}"
        done_ids = [i for i in image_ids if results[i].state == "done"]
        expected = expected_analyses(world, analyser, done_ids)
        for image_id in done_ids:
            stored, fresh = results[image_id], expected[image_id]
            assert stored.resultDigest == result_digest(fresh), (
                f"image {image_id}: the stored result differs from a fresh analysis: stored "
                f"{stored.topClass} {stored.crystalCount} crystals, dispense "
                f"({stored.dispenseX}, {stored.dispenseY}); fresh {fresh.top_class} "
                f"{len(fresh.crystal_targets)} crystals, {fresh.dispense}"
            )

        score_counts = dict(
            session.execute(
                select(t.BLSampleImageHasAutoScoreClass.blSampleImageId, func.count())
                .where(t.BLSampleImageHasAutoScoreClass.blSampleImageId.in_(image_ids))
                .group_by(t.BLSampleImageHasAutoScoreClass.blSampleImageId)
            ).all()
        )
        for image_id in image_ids:
            analysis = expected.get(image_id)
            wanted = len(analysis.probabilities or {}) if analysis is not None else 0
            assert score_counts.get(image_id, 0) == wanted, f"image {image_id}: score rows"

        subsamples = session.execute(
            select(
                t.BLSubSample.blSubSampleId, t.BLSubSample.blSampleImageId, t.BLSubSample.positionId
            )
            .where(t.BLSubSample.blSampleImageId.in_(image_ids))
            .where(t.BLSubSample.source == SOURCE_AUTO)
        ).all()
        per_image = Counter(image_id for _, image_id, _ in subsamples)
        for image_id in image_ids:
            wanted = len(expected[image_id].crystal_targets) if image_id in expected else 0
            assert per_image.get(image_id, 0) == wanted, f"image {image_id}: BLSubSample rows"
        position_ids = [position_id for _, _, position_id in subsamples]
        assert len(set(position_ids)) == len(position_ids), "a Position shared by sub-samples"
        positions = (
            session.scalar(
                select(func.count())
                .select_from(t.Position)
                .where(t.Position.positionId.in_(position_ids))
            )
            if position_ids
            else 0
        )
        assert positions == len(position_ids), "a BLSubSample points at a missing Position"
        orphans = session.scalar(
            select(func.count())
            .select_from(t.Position)
            .where(
                ~t.Position.positionId.in_(
                    select(t.BLSubSample.positionId).where(t.BLSubSample.positionId.is_not(None))
                )
            )
        )
        assert orphans == 0, f"{orphans} orphan Position rows"

        dispensing = session.execute(
            select(t.BLSamplePosition.blSamplePositionId, t.BLSamplePosition.blSampleId)
            .where(t.BLSamplePosition.blSampleId.in_(sample_of.values()))
            .where(t.BLSamplePosition.positionType == POSITION_TYPE_DISPENSING)
        ).all()
        by_sample = Counter(sample_id for _, sample_id in dispensing)
        for image_id in image_ids:
            record = results[image_id]
            analysis = expected.get(image_id)
            has_point = bool(
                analysis is not None
                and analysis.dispense is not None
                and str(analysis.dispense.status) == "ok"
            )
            assert by_sample.get(sample_of[image_id], 0) == int(has_point), (
                f"image {image_id}: dispensing rows"
            )
            if has_point:
                assert record.blSamplePositionId in {pid for pid, _ in dispensing}

        detections = session.execute(
            select(ChimpDetection.blSampleImageId, ChimpDetection.blSubSampleId).where(
                ChimpDetection.blSampleImageId.in_(image_ids)
            )
        ).all()
        per_image_detections = Counter(image_id for image_id, _ in detections)
        for image_id in image_ids:
            wanted = len(expected[image_id].detections) if image_id in expected else 0
            assert per_image_detections.get(image_id, 0) == wanted, f"image {image_id}: detections"
        linked = sorted(sub for _, sub in detections if sub is not None)
        assert linked == sorted(sub_id for sub_id, _, _ in subsamples), "detections <-> sub-samples"

        models = Counter(
            session.scalars(
                select(ChimpImageModel.blSampleImageId).where(
                    ChimpImageModel.blSampleImageId.in_(image_ids)
                )
            )
        )
        for image_id in image_ids:
            wanted = len(expected[image_id].models) if image_id in expected else 0
            assert models.get(image_id, 0) == wanted, f"image {image_id}: model rows"

        inspection = session.get(ChimpInspection, world.inspection_id)
        assert inspection is not None
        assert inspection.state == "done"
        assert (inspection.imageCount, inspection.doneCount, inspection.failedCount) == (
            len(image_ids),
            len(done_ids),
            len(failed),
        )
    return PlateCheck(
        images=len(image_ids),
        done=len(done_ids),
        failed=failed,
        score_rows=sum(score_counts.values()),
        subsamples=len(subsamples),
        positions=positions,
        dispensing_positions=len(dispensing),
        detections=len(detections),
    )


def replace_with_special_file(path: Path, kind: str) -> None:
    """Put something that is not a regular image file at ``path``."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_loop":
        partner = path.with_name(path.name + ".partner")
        path.symlink_to(partner)
        partner.symlink_to(path)
    elif kind == "self_loop":
        path.symlink_to(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    elif kind == "directory":
        path.mkdir()
    else:
        raise ValueError(f"no special file of kind {kind!r}")
