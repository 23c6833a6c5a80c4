"""One unit of work: fetch -> analyse -> write, for some images of one inspection.

The daemon, ``replay --local`` and ``demo`` all call ``Pipeline.process``, so there is one
code path from image to ISPyB rows. Its failure rules are the worker's:

- a bad image (missing, corrupt, too large...; or one the analyser fails on by itself) is
  recorded as failed with its reason, and the rest of the images go on;
- a transient database error propagates as ``DatabaseUnavailableError``: every write is its
  own short idempotent transaction, so the caller retries the whole unit safely;
- anything else propagates (the daemon requeues; the delivery limit stops a poison message).

Images are fetched and decoded one batch ahead on a helper thread, so I/O overlaps inference.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from chimp_worker.analysis import Analyser, DecodedImage, ImageAnalysis
from chimp_worker.errors import (
    AnalysisError,
    ChimpError,
    ImageError,
    ImageMissingError,
    UnknownImageError,
)
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from chimp_worker.config import Settings
    from chimp_worker.images import ImageSource
    from chimp_worker.ispyb.progress import InspectionImage

log = get_logger(__name__)

ImageOutcome = Literal["done", "unchanged", "failed", "skipped"]
ImageFailure = ImageError | AnalysisError  # recorded against the image; the plate goes on


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


@dataclass(frozen=True)
class WorkOutcome:
    """What one call of ``Pipeline.process`` did."""

    inspection_id: int
    image_count: int  # images of the whole inspection
    written: tuple[int, ...] = ()  # results stored (new or unchanged)
    failed: dict[int, str] = field(default_factory=dict)  # image id -> reason
    skipped: tuple[int, ...] = ()  # asked for, already done with these model files
    completed_inspection: bool = False  # this call completed the inspection (exactly once)
    analyser: str = ""
    schema_name: str = ""
    seconds: float = 0.0


@dataclass
class _Fetched:
    image: InspectionImage
    decoded: DecodedImage | None = None
    error: ImageError | None = None
    seconds: float = 0.0


def make_analyser(settings: Settings) -> Analyser:
    """CHiMP models when model files are configured (or asked for), else the weight-free
    baseline; torch is imported only for CHiMP."""
    if settings.effective_analyser == "chimp":
        from chimp_worker.models import ChimpAnalyser

        return ChimpAnalyser.from_settings(settings)
    from chimp_worker.baseline import BaselineAnalyser

    return BaselineAnalyser(settings)


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
    ) -> None:
        self.session_factory = session_factory
        self.baseline_writes_targets = baseline_writes_targets
        self.image_source = image_source
        self.analyser = analyser
        self.batch_size = max(1, batch_size)
        self._engine = engine

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        analyser: Analyser | None = None,
        image_source: ImageSource | None = None,
    ) -> Pipeline:
        """Database, image source and analyser from settings; pass parts to replace them."""
        from chimp_worker.images import make_image_source
        from chimp_worker.ispyb.database import make_engine, make_session_factory

        engine = make_engine(settings.database_url, settings.database_connect_args)
        return cls(
            make_session_factory(engine),
            image_source if image_source is not None else make_image_source(settings),
            analyser if analyser is not None else make_analyser(settings),
            batch_size=settings.batch_size,
            engine=engine,
            baseline_writes_targets=settings.baseline_writes_targets,
        )

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

    def plan(self, inspection_id: int, image_ids: Sequence[int] | None = None) -> list[int]:
        """Ids of the inspection's images that still need work with these model files (of
        ``image_ids`` if given), marked pending. Raises ``InspectionNotVisibleError`` or
        ``UnknownImageError``."""
        from chimp_worker.ispyb import progress

        images = progress.inspection_images(self.session_factory, inspection_id)
        if image_ids is not None:
            _require_known(inspection_id, image_ids, {image.blSampleImageId for image in images})
        needing = progress.images_needing_work(
            self.session_factory,
            inspection_id,
            self.model_checksums,
            target_rule=self.target_rule,
        )
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
    ) -> WorkOutcome:
        """Analyse and write the images that need work (of ``image_ids``, or all), then try to
        complete the inspection. Images already done with these model files and this target
        rule are skipped."""
        from chimp_worker.ispyb import progress as db

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(inspection_id=inspection_id):
            images = db.inspection_images(self.session_factory, inspection_id)
            by_id = {image.blSampleImageId: image for image in images}
            asked = [image.blSampleImageId for image in images] if image_ids is None else image_ids
            _require_known(inspection_id, asked, set(by_id))
            needing = set(
                db.images_needing_work(
                    self.session_factory,
                    inspection_id,
                    self.model_checksums,
                    target_rule=self.target_rule,
                )
            )
            todo = [by_id[image_id] for image_id in dict.fromkeys(asked) if image_id in needing]
            skipped = tuple(
                image_id for image_id in dict.fromkeys(asked) if image_id not in needing
            )
            report = _Reporter(inspection_id, len(todo) + len(skipped), progress)
            for image_id in skipped:
                report(image_id, "skipped", None, 0.0)
            written, failed = self._run(todo, report)
            completed = db.try_complete_inspection(self.session_factory, inspection_id)
            outcome = WorkOutcome(
                inspection_id=inspection_id,
                image_count=len(images),
                written=tuple(written),
                failed=failed,
                skipped=skipped,
                completed_inspection=completed,
                analyser=self.analyser.name,
                schema_name=self.analyser.schema_name,
                seconds=time.perf_counter() - started,
            )
            log.info(
                "work_done",
                analyser=self.analyser.name,
                written=len(written),
                failed=len(failed),
                skipped=len(skipped),
                completed_inspection=completed,
                seconds=round(outcome.seconds, 3),
            )
            return outcome

    def _run(
        self, todo: list[InspectionImage], report: _Reporter
    ) -> tuple[list[int], dict[int, str]]:
        """Fetch batch n+1 on a helper thread while batch n is analysed and written."""
        written: list[int] = []
        failed: dict[int, str] = {}
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if not batches:
            return written, failed
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chimp-fetch") as fetcher:
            pending: Future[list[_Fetched]] = self._fetch_later(fetcher, batches[0])
            for number, _batch in enumerate(batches):
                fetched = pending.result()
                if number + 1 < len(batches):
                    pending = self._fetch_later(fetcher, batches[number + 1])
                for item, result, seconds in self._analyse(fetched):
                    image_id = item.image.blSampleImageId
                    with structlog.contextvars.bound_contextvars(blsample_image_id=image_id):
                        if isinstance(result, ImageFailure):
                            self._record_failure(image_id, result)
                            failed[image_id] = result.reason
                            report(image_id, "failed", result.reason, seconds)
                        else:
                            changed = self._write(image_id, result)
                            written.append(image_id)
                            report(image_id, "done" if changed else "unchanged", None, seconds)
        return written, failed

    def _fetch_later(
        self, fetcher: ThreadPoolExecutor, batch: list[InspectionImage]
    ) -> Future[list[_Fetched]]:
        context = contextvars.copy_context()  # keep the bound log context on the helper thread
        return fetcher.submit(context.run, self._fetch_batch, batch)

    def _fetch_batch(self, batch: list[InspectionImage]) -> list[_Fetched]:
        fetched = []
        for image in batch:
            started = time.perf_counter()
            item = _Fetched(image)
            try:
                if not image.imageFullPath:
                    raise ImageMissingError(
                        f"BLSampleImage {image.blSampleImageId} has no imageFullPath"
                    )
                item.decoded = self.image_source.fetch(image.imageFullPath, image.blSampleImageId)
            except ImageError as error:
                item.error = error
            item.seconds = time.perf_counter() - started
            fetched.append(item)
        return fetched

    def _analyse(
        self, fetched: list[_Fetched]
    ) -> Iterator[tuple[_Fetched, ImageAnalysis | ImageFailure, float]]:
        """Yield each image with its analysis or its error, with seconds spent on it.

        A batch the analyser fails on is retried image by image, so one odd image cannot take
        its batch-mates down with it.
        """
        usable = [item for item in fetched if item.decoded is not None]
        results: dict[int, ImageAnalysis | ImageFailure] = {}
        analyse_seconds = 0.0
        if usable:
            started = time.perf_counter()
            analyses: list[ImageAnalysis | ImageFailure] | None
            try:
                analyses = self._analyse_batch(usable)
            except ImageError:  # the analyser refused an image: find which one
                analyses = None
            except ChimpError:
                raise
            except Exception:  # a model fault on some image: find which one(s)
                log.warning("batch_analysis_failed_retrying_singly", images=len(usable))
                analyses = None
            if analyses is None:
                analyses = [self._analyse_one(item) for item in usable]
            analyse_seconds = (time.perf_counter() - started) / len(usable)
            for item, analysis in zip(usable, analyses, strict=True):
                results[id(item)] = analysis
        for item in fetched:
            if item.error is not None:
                yield item, item.error, item.seconds
            else:
                yield item, results[id(item)], item.seconds + analyse_seconds

    def _analyse_batch(self, items: list[_Fetched]) -> list[ImageAnalysis | ImageFailure]:
        decoded = [item.decoded for item in items if item.decoded is not None]
        analyses = self.analyser.analyse(decoded)
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
        except ChimpError:
            raise
        except Exception as error:  # recorded against this image; the plate goes on
            log.exception("image_analysis_failed")
            return AnalysisError(f"analyser failed: {type(error).__name__}: {error}")

    def _write(self, image_id: int, analysis: ImageAnalysis) -> bool:
        from chimp_worker.ispyb.writer import write_image_result

        queueable = analysis.analyser != "baseline" or self.baseline_writes_targets
        return write_image_result(
            self.session_factory, image_id, analysis, queueable_targets=queueable
        ).changed

    def _record_failure(self, image_id: int, error: ImageFailure) -> None:
        from chimp_worker.ispyb.writer import record_image_failure

        log.warning("image_failed", reason=error.reason, detail=str(error))
        record_image_failure(
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
        self, image_id: int, outcome: ImageOutcome, reason: str | None, seconds: float
    ) -> None:
        self.index += 1
        if outcome != "skipped":
            details = {"reason": reason} if reason else {}
            log.info(
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
