"""``chimp-worker run`` with timing hooks, so a test can kill or stop a worker at an exact step.

Run as a script: ``python tests/helpers/hooked_worker.py run --idle-exit 5``. It installs the
hooks named by ``FAULT_HOOK_*`` environment variables, then calls the real ``chimp-worker``
entry point (``chimp_worker.cli.main``): the daemon, pipeline, writer and broker code are the
product's own. The hooks only add a pause and a line in an event file at two points:

- ``FAULT_HOOK_ANALYSE_PAUSE_S``: before every analyser call, write ``analysing <paths>`` and
  sleep -- the window for "SIGKILL / SIGTERM during inference" (before any commit);
- ``FAULT_HOOK_AFTER_WRITE_PAUSE_S``: after an image's result transaction has committed,
  write ``written <image id>`` and sleep -- the window for "SIGKILL after a commit, before
  the ack". ``FAULT_HOOK_AFTER_WRITE_LIMIT`` pauses only the first N writes.
- ``FAULT_HOOK_AFTER_COMPLETE_PAUSE_S``: after the transaction that marked the inspection done
  (this worker won the completion, in ``Pipeline.process`` or a planner's
  ``Pipeline.complete_inspection``), write ``completed <inspection id>`` and sleep -- the
  window between the completion commit and the results-ready publish.
- ``FAULT_HOOK_PLAN_PAUSE_S``: after an inspection event has been planned (work items not yet
  published, the event not yet acked), write ``planned <inspection id>`` and sleep -- holds
  the event in flight so a duplicate must go to another worker.
- ``FAULT_HOOK_PENDING_INSERT_PAUSE_S``: before the first ``INSERT`` into
  ``chimp_image_result`` (planning, after the worker looked for existing rows), write
  ``inserting <statement start>`` and sleep -- two workers planning one event both look, then
  both insert.
- ``FAULT_HOOK_FETCH_HANG_ON=<path>``: fetching the image at that path blocks for ever (as a
  read on a hung NFS mount does), after writing ``fetch_hanging <path>``.
- ``FAULT_HOOK_ANALYSE_HANG_ON=<path>``: the analyser blocks for ever on any batch holding
  that image (a model call that never returns), after writing ``analysis_hanging <paths>``.
- ``FAULT_HOOK_ANALYSER=pixel-stats``: use the test suite's weight-free ``PixelStatsAnalyser``
  instead of the configured analyser.

Events go to ``FAULT_HOOK_EVENTS`` (one line each, ``<pid> <event> <detail>``), appended with
O_APPEND so several workers can share one file.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]


def _note(event: str, detail: str) -> None:
    path = os.environ.get("FAULT_HOOK_EVENTS")
    if not path:
        return
    line = f"{os.getpid()} {event} {detail}\n".encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


class _PausingAnalyser:
    """Wraps the real analyser: note the images, pause, then analyse them for real."""

    def __init__(self, inner: Any, pause_s: float, hang_on: str = "") -> None:
        self._inner = inner
        self._pause_s = pause_s
        self._hang_on = hang_on
        self.name = inner.name
        self.schema_name = inner.schema_name
        self.models = inner.models
        self.target_rule = inner.target_rule

    def analyse(self, images: Sequence[Any]) -> Any:
        sources = ",".join(image.source for image in images)
        _note("analysing", sources)
        if self._hang_on and any(image.source == self._hang_on for image in images):
            _note("analysis_hanging", sources)
            threading.Event().wait()  # never returns
        time.sleep(self._pause_s)
        return self._inner.analyse(images)


def install_hooks() -> None:
    import chimp_worker.ispyb.progress as progress
    import chimp_worker.ispyb.writer as writer
    import chimp_worker.pipeline as pipeline
    import chimp_worker.wiring as wiring

    choice = os.environ.get("FAULT_HOOK_ANALYSER", "configured")
    analyse_pause = float(os.environ.get("FAULT_HOOK_ANALYSE_PAUSE_S", "0"))
    analyse_hang_on = os.environ.get("FAULT_HOOK_ANALYSE_HANG_ON", "")
    original_make_analyser = wiring.make_analyser

    def make_analyser(settings: Any) -> Any:
        if choice == "pixel-stats":
            sys.path.insert(0, str(TESTS))
            from helpers.analysers import PixelStatsAnalyser

            analyser: Any = PixelStatsAnalyser()
        else:
            analyser = original_make_analyser(settings)
        if analyse_pause > 0 or analyse_hang_on:
            return _PausingAnalyser(analyser, analyse_pause, analyse_hang_on)
        return analyser

    wiring.make_analyser = make_analyser

    write_pause = float(os.environ.get("FAULT_HOOK_AFTER_WRITE_PAUSE_S", "0"))
    write_limit = int(os.environ.get("FAULT_HOOK_AFTER_WRITE_LIMIT", "1000000"))
    original_write = writer.write_image_result
    writes = [0]

    def write_image_result(*args: Any, **kwargs: Any) -> Any:
        outcome = original_write(*args, **kwargs)  # committed
        writes[0] += 1
        _note("written", str(outcome.blSampleImageId))
        if write_pause > 0 and writes[0] <= write_limit:
            time.sleep(write_pause)
        return outcome

    writer.write_image_result = write_image_result

    complete_pause = float(os.environ.get("FAULT_HOOK_AFTER_COMPLETE_PAUSE_S", "0"))
    original_complete = progress.try_complete_inspection

    def try_complete_inspection(*args: Any, **kwargs: Any) -> bool:
        completed = original_complete(*args, **kwargs)  # committed
        if completed:
            _note("completed", str(args[1] if len(args) > 1 else kwargs["inspection_id"]))
            time.sleep(complete_pause)
        return completed

    progress.try_complete_inspection = try_complete_inspection

    plan_pause = float(os.environ.get("FAULT_HOOK_PLAN_PAUSE_S", "0"))
    original_plan = pipeline.Pipeline.plan

    def plan(self: Any, inspection_id: int, *args: Any, **kwargs: Any) -> Any:
        image_ids = original_plan(self, inspection_id, *args, **kwargs)
        _note("planned", str(inspection_id))
        time.sleep(plan_pause)
        return image_ids

    if plan_pause > 0:
        pipeline.Pipeline.plan = plan  # type: ignore[method-assign]

    fetch_hang_on = os.environ.get("FAULT_HOOK_FETCH_HANG_ON", "")
    if fetch_hang_on:
        import chimp_worker.images as images

        original_fetch = images.FilesystemSource.fetch

        def fetch(self: Any, image_full_path: str, blsample_image_id: int | None = None) -> Any:
            if image_full_path == fetch_hang_on:
                _note("fetch_hanging", image_full_path)
                threading.Event().wait()  # a read that never returns
            return original_fetch(self, image_full_path, blsample_image_id)

        images.FilesystemSource.fetch = fetch  # type: ignore[method-assign]

    insert_pause = float(os.environ.get("FAULT_HOOK_PENDING_INSERT_PAUSE_S", "0"))
    if insert_pause > 0:
        from sqlalchemy import Engine, event

        paused = [False]

        def before_insert(*args: Any) -> None:
            statement = str(args[2]).lstrip()
            if paused[0] or not statement.startswith("INSERT INTO chimp_image_result"):
                return
            paused[0] = True
            _note("inserting", statement[:40].replace(" ", "_"))
            time.sleep(insert_pause)

        event.listen(Engine, "before_cursor_execute", before_insert)


if __name__ == "__main__":
    install_hooks()
    from chimp_worker.cli import main

    _note("started", " ".join(sys.argv[1:]))
    main(sys.argv[1:])
