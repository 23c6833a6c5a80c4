"""Running worker daemons inside a test: in threads (with an injected analyser) or as a real
``chimp-worker run`` process, and reading back what they wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import Analyser
from chimp_worker.config import Settings
from chimp_worker.daemon import Daemon
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.worker_tables import ChimpImageResult, ChimpInspection
from chimp_worker.mock_imager.plate import MockPlate
from chimp_worker.pipeline import Pipeline
from chimp_worker.wiring import make_pipeline

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PlateWorld:
    """A mock plate in MariaDB, settings that point a worker at it and at this test's queues."""

    settings: Settings
    plate: MockPlate
    factory: sessionmaker[Session]

    @property
    def inspection_id(self) -> int:
        return self.plate.latest.containerInspectionId

    @property
    def image_ids(self) -> tuple[int, ...]:
        return self.plate.latest.blSampleImageIds


@dataclass
class WorkerThread:
    """A Daemon running on a thread of the test process."""

    daemon: Daemon
    pipeline: Pipeline
    thread: threading.Thread
    exit_codes: list[int] = field(default_factory=list)

    @property
    def metrics(self) -> Any:
        return self.daemon.metrics

    def stop(self, timeout_s: float = 30.0) -> None:
        self.daemon.request_stop()
        self.join(timeout_s)

    def join(self, timeout_s: float = 60.0) -> None:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError(f"worker {self.daemon.connection_name} did not stop")

    @property
    def finished(self) -> bool:
        return not self.thread.is_alive()


def start_worker(
    settings: Settings,
    analyser: Analyser | None = None,
    *,
    name: str,
    **daemon_options: Any,
) -> WorkerThread:
    """Build a pipeline (optionally with a test analyser) and run a Daemon on a thread."""
    pipeline = make_pipeline(settings, analyser=analyser)
    daemon = Daemon(settings, pipeline, connection_name=name, **daemon_options)
    holder = WorkerThread(daemon, pipeline, threading.Thread(target=lambda: None))

    def run() -> None:
        try:
            holder.exit_codes.append(daemon.run())
        finally:
            pipeline.close()

    holder.thread = threading.Thread(target=run, name=f"daemon-{name}", daemon=True)
    holder.thread.start()
    return holder


@contextmanager
def running_workers() -> Iterator[Callable[..., WorkerThread]]:
    """Start workers inside the block; every one still running is stopped at the end."""
    started: list[WorkerThread] = []

    def start(*args: Any, **kwargs: Any) -> WorkerThread:
        worker = start_worker(*args, **kwargs)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if not worker.finished:
                worker.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")
        time.sleep(0.05)


def image_states(
    factory: sessionmaker[Session], inspection_id: int
) -> dict[int, tuple[str, str | None]]:
    """blSampleImageId -> (state, failure reason) from the worker's per-image table."""
    with factory() as session:
        rows = session.execute(
            select(
                ChimpImageResult.blSampleImageId,
                ChimpImageResult.state,
                ChimpImageResult.failureReason,
            ).where(ChimpImageResult.containerInspectionId == inspection_id)
        )
        return {image_id: (state, reason) for image_id, state, reason in rows}


def inspection_state(factory: sessionmaker[Session], inspection_id: int) -> str | None:
    with factory() as session:
        row = session.get(ChimpInspection, inspection_id)
        return None if row is None else row.state


def score_rows_per_image(
    factory: sessionmaker[Session], image_ids: tuple[int, ...]
) -> dict[int, int]:
    """How many BLSampleImage_has_AutoScoreClass rows each image has (4 per analyser schema)."""
    with factory() as session:
        rows = session.execute(
            select(
                t.BLSampleImageHasAutoScoreClass.blSampleImageId,
                func.count(),
            )
            .where(t.BLSampleImageHasAutoScoreClass.blSampleImageId.in_(image_ids))
            .group_by(t.BLSampleImageHasAutoScoreClass.blSampleImageId)
        )
        return dict(rows.all())


def worker_process(
    settings_env: Mapping[str, str], *args: str, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """``chimp-worker run ARGS`` as a real process with CHIMP_* settings in its environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIMP_")}
    env.update(settings_env)
    env.setdefault("CHIMP_LOG_FORMAT", "json")
    return subprocess.Popen(
        [sys.executable, "-m", "chimp_worker", "run", *args],
        env=env,
        cwd=str(cwd or REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
