"""One unit of work: fetch -> analyse -> write, for some images of one inspection.

The daemon, ``replay --local`` and ``demo`` all call ``Pipeline.process``, so there is one
code path from image to ISPyB rows. Its failure rules are the worker's:

- a bad image (missing, corrupt, too large, not a regular file...; or one the analyser fails
  on by itself) is recorded as failed with its reason, and the rest of the images go on; any
  exception while fetching one image is that image's failure;
- so is an image whose write the database refuses for good (a foreign key, a constraint:
  ``DatabaseRefusedError``): retrying or redelivering cannot change the answer;
- no image can wedge the unit: its fetch, and its share of a batch's analysis, run on daemon
  threads the pipeline stops waiting for after ``image_deadline_s`` (per image), recording
  ``image_timeout`` / ``analysis_timeout`` (see ``deadlines.py``);
- a transient database error propagates as ``DatabaseUnavailableError``: every write is its
  own short idempotent transaction, so the caller retries the whole unit safely;
- anything else propagates (the daemon requeues; the delivery limit stops a poison message).

Images are fetched and decoded one batch ahead on a helper thread, so I/O overlaps inference.
Callers that watch for work that stopped moving (the daemon's liveness) pass a ``Heartbeat``:
the pipeline beats it after each image and says how long each bounded wait may take.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from chimp_worker.analysis import Analyser, DecodedImage, ImageAnalysis
from chimp_worker.deadlines import DeadlineExceededError, call_with_deadline, in_background
from chimp_worker.errors import (
    AnalysisError,
    AnalysisTimeoutError,
    ChimpError,
    DatabaseRefusedError,
    ImageError,
    ImageFetchError,
    ImageMissingError,
    ImageTimeoutError,
    TransientError,
    UnknownImageError,
)
from chimp_worker.hits.policy import HitPolicy
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from chimp_worker.events import ResultsReady
    from chimp_worker.images import ImageSource
    from chimp_worker.ispyb.progress import InspectionImage
    from chimp_worker.ispyb.time_course import DropHit

log = get_logger(__name__)

ImageOutcome = Literal["done", "unchanged", "failed", "skipped"]
# Recorded against the image; the plate goes on.
ImageFailure = ImageError | AnalysisError | DatabaseRefusedError


@dataclass(frozen=True)
class ImageProgress:
    """Reported after each image: for progress bars, metrics and cancellation (raise to stop)."""

    inspection_id: int
    blsample_image_id: int
    outcome: ImageOutcome  # unchanged: an identical result was already stored
    reason: str | None  # failure reason for "failed"
    seconds: float
    index: int  # 1-based position in this unit of work
    total: int


ProgressCallback = Callable[[ImageProgress], None]
DEFAULT_IMAGE_DEADLINE_S = 120.0


class Heartbeat(Protocol):
    """Told when the work moved and how long a bounded wait may take (for liveness)."""

    def beat(self, doing: str) -> None: ...

    def expect(self, seconds: float, doing: str) -> None: ...


class NoHeartbeat:
    """For callers that do not watch (demo, replay)."""

    def beat(self, doing: str) -> None:
        pass

    def expect(self, seconds: float, doing: str) -> None:
        pass


NO_HEARTBEAT = NoHeartbeat()


@dataclass(frozen=True)
class WorkOutcome:
    """What one call of ``Pipeline.process`` did."""

    inspection_id: int
    image_count: int  # images of the whole inspection
    written: tuple[int, ...] = ()  # results stored (new or unchanged)
    failed: dict[int, str] = field(default_factory=dict)  # image id -> reason
    skipped: tuple[int, ...] = ()  # asked for, already done with these model files
    # this call completed the inspection (exactly once), or changed the counts of one already
    # complete (a failed image now done: its summary recounted, results-ready owed again)
    completed_inspection: bool = False
    changed: bool = False  # a result or failure was stored that differs from what was there
    analyser: str = ""
    schema_name: str = ""
    seconds: float = 0.0
    new_hits: tuple[DropHit, ...] = ()  # drops that first became hits here (when completed)


@dataclass(frozen=True)
class InspectionSurvey:
    """An inspection's images, and the ids of those that still need work (by id)."""

    inspection_id: int
    images: tuple[InspectionImage, ...]
    needing: tuple[int, ...]


@dataclass
class _Fetched:
    image: InspectionImage
    decoded: DecodedImage | None = None
    error: ImageError | None = None
    seconds: float = 0.0


class Pipeline:
    """Analyses images of an inspection and writes the results; safe to call from threads."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        image_source: ImageSource,
        analyser: Analyser,
        *,
        batch_size: int = 4,
        engine: Engine | None = None,
        baseline_writes_targets: bool = True,
        image_deadline_s: float = DEFAULT_IMAGE_DEADLINE_S,
        hit_policy: HitPolicy | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.image_deadline_s = image_deadline_s
        self.baseline_writes_targets = baseline_writes_targets
        self.hit_policy = hit_policy or HitPolicy()
        self.image_source = image_source
        self.analyser = analyser
        self.batch_size = max(1, batch_size)
        self._engine = engine

    @property
    def engine(self) -> Engine | None:
        """The engine this pipeline created (None when given a session factory only)."""
        return self._engine

    @property
    def model_checksums(self) -> set[str]:
        return {model.sha256 for model in self.analyser.models}

    @property
    def target_rule(self) -> str | None:
        """The rule this analyser's targets follow; results by another rule need work."""
        return self.analyser.target_rule

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def survey(
        self, inspection_id: int, image_ids: Sequence[int] | None = None
    ) -> InspectionSurvey:
        """The inspection's images and which of them still need work with these model files
        and this target rule: where ``plan`` and ``process`` both start. Raises
        ``InspectionNotVisibleError``, or ``UnknownImageError`` for an id in ``image_ids``
        that is not the inspection's. No image asked for (``[]``): none needs judging."""
        from chimp_worker.ispyb import progress

        images = progress.inspection_images(self.session_factory, inspection_id)
        if image_ids is not None:
            _require_known(inspection_id, image_ids, {image.blSampleImageId for image in images})
        needing: list[int] = []
        if image_ids is None or image_ids:
            needing = progress.images_needing_work(
                self.session_factory,
                inspection_id,
                self.model_checksums,
                target_rule=self.target_rule,
            )
        return InspectionSurvey(inspection_id, tuple(images), tuple(needing))

    def plan(self, inspection_id: int, image_ids: Sequence[int] | None = None) -> list[int]:
        """Ids of the inspection's images that still need work with these model files (of
        ``image_ids`` if given), marked pending. Raises ``InspectionNotVisibleError`` or
        ``UnknownImageError``."""
        from chimp_worker.ispyb import progress

        needing = list(self.survey(inspection_id, image_ids).needing)
        if image_ids is not None:
            wanted = set(image_ids)
            needing = [image_id for image_id in needing if image_id in wanted]
        if needing:
            progress.mark_images_pending(self.session_factory, inspection_id, needing)
        return needing

    def process(
        self,
        inspection_id: int,
        image_ids: Sequence[int] | None = None,
        progress: ProgressCallback | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> WorkOutcome:
        """Analyse and write the images that need work (of ``image_ids``, or all), then try to
        complete the inspection. Images already done with these model files and this target
        rule are skipped."""
        beat = heartbeat or NO_HEARTBEAT
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(inspection_id=inspection_id):
            survey = self.survey(inspection_id, image_ids)
            by_id = {image.blSampleImageId: image for image in survey.images}
            asked = list(by_id) if image_ids is None else image_ids
            needing = set(survey.needing)
            todo = [by_id[image_id] for image_id in dict.fromkeys(asked) if image_id in needing]
            skipped = tuple(
                image_id for image_id in dict.fromkeys(asked) if image_id not in needing
            )
            report = _Reporter(inspection_id, len(todo) + len(skipped), progress)
            for image_id in skipped:
                report(image_id, "skipped", None, 0.0)
            written, failed, changed = self._run(todo, report, beat)
            return self._complete(
                survey, started, written=written, failed=failed, skipped=skipped, changed=changed
            )

    def complete_inspection(self, inspection_id: int) -> WorkOutcome:
        """Complete the inspection if every image is done or failed, analysing nothing: for a
        planner that found no work left (the completion, or its announcement, may be owed).
        Raises ``InspectionNotVisibleError``."""
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(inspection_id=inspection_id):
            return self._complete(self.survey(inspection_id, []), started)

    def _complete(
        self,
        survey: InspectionSurvey,
        started: float,
        *,
        written: Sequence[int] = (),
        failed: dict[int, str] | None = None,
        skipped: tuple[int, ...] = (),
        changed: bool = False,
    ) -> WorkOutcome:
        """Try the completion (exactly once across workers), bring the time course up to date
        when this call completed it, and say what the unit did."""
        from chimp_worker.ispyb import progress as db

        inspection_id = survey.inspection_id
        failed = failed or {}
        completed = db.try_complete_inspection(self.session_factory, inspection_id)
        new_hits = self._time_course_after_completion(inspection_id) if completed else ()
        outcome = WorkOutcome(
            inspection_id=inspection_id,
            image_count=len(survey.images),
            written=tuple(written),
            failed=failed,
            skipped=skipped,
            completed_inspection=completed,
            changed=changed,
            analyser=self.analyser.name,
            schema_name=self.analyser.schema_name,
            seconds=time.perf_counter() - started,
            new_hits=new_hits,
        )
        log.info(
            "work_done",
            analyser=self.analyser.name,
            written=len(written),
            failed=len(failed),
            skipped=len(skipped),
            completed_inspection=completed,
            new_hits=len(new_hits),
            seconds=round(outcome.seconds, 3),
        )
        return outcome

    def results_pending_publication(
        self, inspection_id: int, *, completed_s_ago: float | None = None
    ) -> bool:
        """The inspection is done and no results-ready for it was confirmed yet; with
        ``completed_s_ago``, only if it was completed at least that many seconds ago."""
        from chimp_worker.ispyb import progress
        from chimp_worker.ispyb.writer import utcnow

        cutoff = None
        if completed_s_ago is not None:
            cutoff = utcnow() - datetime.timedelta(seconds=completed_s_ago)
        return progress.results_pending_publication(
            self.session_factory, inspection_id, completed_before=cutoff
        )

    def mark_results_published(self, inspection_id: int) -> bool:
        """Record that the broker confirmed results-ready; False if already recorded."""
        from chimp_worker.ispyb import progress

        return progress.mark_results_published(self.session_factory, inspection_id)

    def probe_database(self) -> str | None:
        """None when the database answers a trivial query, else why not (for outage holds)."""
        from chimp_worker.ispyb.database import probe_database

        return probe_database(self.session_factory)

    @staticmethod
    def database_errors_described() -> AbstractContextManager[None]:
        """Around a unit of work: a database error left over becomes ``DatabaseError`` (or
        ``DatabaseUnavailableError`` when transient), described in one line without the SQL."""
        from chimp_worker.ispyb.database import database_errors_described

        return database_errors_described()

    def update_time_course(self, inspection_id: int, *, full: bool = False) -> tuple[DropHit, ...]:
        """Bring the plate's time course up to date with this (done) inspection; idempotent.

        Returns the drops that first became hits at the inspection. See
        ``chimp_worker.ispyb.time_course``.
        """
        from chimp_worker.ispyb.time_course import refresh_time_course

        update = refresh_time_course(
            self.session_factory, inspection_id, self.hit_policy, full=full
        )
        log.info(
            "time_course_updated",
            container_id=update.containerId,
            inspections_computed=len(update.inspections_computed),
            rows_written=update.rows_written,
            new_hits=len(update.new_hits),
        )
        return update.new_hits

    def _time_course_after_completion(self, inspection_id: int) -> tuple[DropHit, ...]:
        """The completion is committed and the images are written: a failure here must not
        fail the unit. It is logged, and the results-ready announcement (``results_ready``)
        computes the course again before anything is announced (and fails there, visibly)."""
        try:
            return self.update_time_course(inspection_id)
        except TransientError as error:
            log.warning("time_course_deferred", reason=error.reason, detail=str(error))
        except Exception:
            log.exception("time_course_failed")
        return ()

    def results_ready(self, inspection_id: int, image_count: int) -> ResultsReady:
        """The results-ready event of a done inspection, with its plate and new hits.

        Updates the time course first (a no-op when the completion already did), so an
        announcement is never made from a course the completion failed to write.
        """
        from chimp_worker.events import NewHit, results_ready_now
        from chimp_worker.ispyb.time_course import refresh_time_course

        update = refresh_time_course(self.session_factory, inspection_id, self.hit_policy)
        return results_ready_now(
            inspection_id,
            image_count,
            self.analyser.name,
            self.analyser.schema_name,
            container_id=update.containerId,
            barcode=update.barcode,
            new_hits=[
                NewHit(
                    blSampleId=hit.blSampleId,
                    location=hit.location or None,
                    well=hit.well,
                    drop=hit.drop,
                    inspectionNumber=hit.inspectionNumber,
                    score=hit.score,
                    crystalCount=hit.crystalCount,
                    crystalAreaUm2=hit.crystalAreaUm2,
                )
                for hit in update.new_hits
            ],
        )

    def _run(
        self, todo: list[InspectionImage], report: _Reporter, beat: Heartbeat
    ) -> tuple[list[int], dict[int, str], bool]:
        """Fetch batch n+1 on a helper thread while batch n is analysed and written; returns
        the images written, those failed, and whether any stored outcome changed."""
        written: list[int] = []
        failed: dict[int, str] = {}
        changed_any = False
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if not batches:
            return written, failed, changed_any
        pending = self._fetch_later(batches[0])
        for number, batch in enumerate(batches):
            # each image's fetch has its own deadline, so this wait is bounded too
            beat.expect(self.image_deadline_s * len(batch), f"fetching {len(batch)} images")
            fetched = pending.result()
            beat.beat("fetched")
            if number + 1 < len(batches):
                pending = self._fetch_later(batches[number + 1])
            for item, result, seconds in self._analyse(fetched, beat):
                image_id = item.image.blSampleImageId
                with structlog.contextvars.bound_contextvars(blsample_image_id=image_id):
                    if not isinstance(result, ImageFailure):
                        try:
                            changed = self._write(image_id, result)
                        except DatabaseRefusedError as refused:
                            result = refused
                        else:
                            changed_any |= changed
                            written.append(image_id)
                            report(image_id, "done" if changed else "unchanged", None, seconds)
                            beat.beat("writing results")
                            continue
                    changed_any |= self._record_failure(image_id, result)
                    failed[image_id] = result.reason
                    report(image_id, "failed", result.reason, seconds, str(result))
                beat.beat("writing results")
        return written, failed, changed_any

    def _fetch_later(self, batch: list[InspectionImage]) -> Future[list[_Fetched]]:
        """Fetch a batch on a daemon thread (never joined at exit: see deadlines.py)."""
        future, _thread = in_background(lambda: self._fetch_batch(batch), name="chimp-prefetch")
        return future

    def _fetch_batch(self, batch: list[InspectionImage]) -> list[_Fetched]:
        return [self._fetch_one(image) for image in batch]

    def _fetch_one(self, image: InspectionImage) -> _Fetched:
        """One image, fetched and decoded, or the error that is its failure; never raises."""
        started = time.perf_counter()
        item = _Fetched(image)
        path = image.imageFullPath
        try:
            if not path:
                raise ImageMissingError(
                    f"BLSampleImage {image.blSampleImageId} has no imageFullPath"
                )
            item.decoded = call_with_deadline(
                lambda: self.image_source.fetch(path, image.blSampleImageId),
                self.image_deadline_s,
                name="chimp-fetch",
            )
        except DeadlineExceededError:
            item.error = ImageTimeoutError(
                f"{path}: no image after {self.image_deadline_s:g} s (image_deadline_s); "
                "the read was abandoned (a hung mount or a stalled server?)"
            )
        except ImageError as error:
            item.error = error
        except Exception as error:  # whatever one image's fetch raises is that image's failure
            item.error = ImageFetchError(f"{path}: {type(error).__name__}: {error}"[:1000])
        item.seconds = time.perf_counter() - started
        return item

    def _analyse(
        self, fetched: list[_Fetched], beat: Heartbeat
    ) -> Iterator[tuple[_Fetched, ImageAnalysis | ImageFailure, float]]:
        """Yield each image with its analysis or its error, with seconds spent on it.

        A batch the analyser fails on, or does not finish within the images' deadline, is
        retried image by image, so one odd image cannot take its batch-mates down with it.
        """
        usable = [item for item in fetched if item.decoded is not None]
        results: dict[int, ImageAnalysis | ImageFailure] = {}
        analyse_seconds = 0.0
        if usable:
            started = time.perf_counter()
            analyses: list[ImageAnalysis | ImageFailure] | None
            beat.expect(self.image_deadline_s * len(usable), f"analysing {len(usable)} images")
            try:
                analyses = self._analyse_batch(usable)
            except ImageError:  # the analyser refused an image: find which one
                analyses = None
            except DeadlineExceededError:
                log.warning("batch_analysis_timed_out_retrying_singly", images=len(usable))
                analyses = None
            except ChimpError:
                raise
            except Exception:  # a model fault on some image: find which one(s)
                log.warning("batch_analysis_failed_retrying_singly", images=len(usable))
                analyses = None
            if analyses is None:
                analyses = []
                for item in usable:
                    beat.expect(self.image_deadline_s, "analysing 1 image")
                    analyses.append(self._analyse_one(item))
            beat.beat("analysed")
            analyse_seconds = (time.perf_counter() - started) / len(usable)
            for item, analysis in zip(usable, analyses, strict=True):
                results[id(item)] = analysis
        for item in fetched:
            if item.error is not None:
                yield item, item.error, item.seconds
            else:
                yield item, results[id(item)], item.seconds + analyse_seconds

    def _analyse_batch(self, items: list[_Fetched]) -> list[ImageAnalysis | ImageFailure]:
        """The analyser's results, on a thread abandoned after ``image_deadline_s`` per image."""
        decoded = [item.decoded for item in items if item.decoded is not None]
        analyses = call_with_deadline(
            lambda: self.analyser.analyse(decoded),
            self.image_deadline_s * len(decoded),
            name="chimp-analyse",
        )
        if len(analyses) != len(decoded):
            raise RuntimeError(
                f"analyser {self.analyser.name} returned {len(analyses)} results "
                f"for {len(decoded)} images"
            )
        return list(analyses)

    def _analyse_one(self, item: _Fetched) -> ImageAnalysis | ImageFailure:
        try:
            return self._analyse_batch([item])[0]
        except ImageError as error:
            return error
        except DeadlineExceededError:
            return AnalysisTimeoutError(
                f"{item.image.imageFullPath}: the analyser gave no result within "
                f"{self.image_deadline_s:g} s (image_deadline_s); abandoned"
            )
        except ChimpError:
            raise
        except Exception as error:  # recorded against this image; the plate goes on
            log.debug("image_analysis_traceback", exc_info=True)  # image_failed says the rest
            return AnalysisError(f"analyser failed: {type(error).__name__}: {error}")

    def _write(self, image_id: int, analysis: ImageAnalysis) -> bool:
        from chimp_worker.ispyb.writer import write_image_result

        queueable = analysis.analyser != "baseline" or self.baseline_writes_targets
        return write_image_result(
            self.session_factory, image_id, analysis, queueable_targets=queueable
        ).changed

    def _record_failure(self, image_id: int, error: ImageFailure) -> bool:
        """Record the failure; True unless that exact failure was already recorded."""
        from chimp_worker.ispyb.writer import record_image_failure

        return record_image_failure(
            self.session_factory, image_id, error.reason, str(error), self.analyser.name
        )


class _Reporter:
    """Counts images and forwards each outcome to the caller's progress callback."""

    def __init__(self, inspection_id: int, total: int, callback: ProgressCallback | None) -> None:
        self.inspection_id = inspection_id
        self.total = total
        self.callback = callback
        self.index = 0

    def __call__(
        self,
        image_id: int,
        outcome: ImageOutcome,
        reason: str | None,
        seconds: float,
        detail: str | None = None,
    ) -> None:
        """One log line per image; a failed image's is a warning with reason and detail."""
        self.index += 1
        if outcome != "skipped":
            details = {"reason": reason, "detail": detail} if reason else {}
            method = log.warning if outcome == "failed" else log.info
            method(
                "image_" + outcome, blsample_image_id=image_id, seconds=round(seconds, 3), **details
            )
        if self.callback is not None:
            self.callback(
                ImageProgress(
                    self.inspection_id, image_id, outcome, reason, seconds, self.index, self.total
                )
            )


def _require_known(inspection_id: int, image_ids: Sequence[int], known: set[int]) -> None:
    unknown = sorted(set(image_ids) - known)
    if unknown:
        shown = ", ".join(str(image_id) for image_id in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise UnknownImageError(
            f"BLSampleImage {shown}{more} not part of ContainerInspection {inspection_id}"
        )
