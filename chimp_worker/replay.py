"""Replay a backlog: find Completed inspections whose images still need work and do it.

An image needs work (``ispyb.progress.work_reason``, the same rule a worker plans an event
by) when it has no result yet ("unprocessed"), its last attempt failed
("failed"), its result came from other model files than the ones configured now
("model changed", compared by sha256), or its targets were computed by another target rule
than the configured one ("rule changed": e.g. results stored before the published rule
became the default, which the migration marks 'original'). Nothing about a replay is kept in
memory between runs: each run recomputes the backlog from the database, so a replay stopped by
Ctrl-C or a crash simply finishes the rest when started again, and the idempotent writer makes
redoing an image harmless. That also makes it safe while daemons run: whoever writes an image
second finds the same result and changes nothing.

Two ways to do the work: publish ``WorkItem`` messages (with publisher confirms) for the running
daemons, or process here with the daemon's own ``Pipeline``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import RowMapping, func, select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.checksums import file_sha256
from chimp_worker.detector_kinds import configured_model_files
from chimp_worker.errors import ConfigError
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import translate_db_errors
from chimp_worker.ispyb.progress import (
    FAILED,
    MODEL_CHANGED,
    REASONS,
    RULE_CHANGED,
    UNPROCESSED,
    ImageState,
    image_model_checksums,
    image_states,
    work_reason,
)
from chimp_worker.ispyb.queries import as_datetime
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from chimp_worker.broker import Publisher
    from chimp_worker.config import Settings
    from chimp_worker.pipeline import ImageProgress, Pipeline

__all__ = [
    # why an image needs work: defined in ispyb.progress, re-exported for replay's callers
    "FAILED",
    "MODEL_CHANGED",
    "REASONS",
    "RULE_CHANGED",
    "UNPROCESSED",
    "Backlog",
    "BacklogInspection",
    "ReplayFilters",
    "ReplaySummary",
    "announce_results",
    "current_model_checksums",
    "current_target_rule",
    "find_backlog",
    "process_backlog",
    "publish_backlog",
    "reopen_done_inspections",
    "settle_reopened",
]

log = get_logger(__name__)

_VISIT = re.compile(r"^([A-Za-z]+)(\d+)-(\d+)$")


@dataclass(frozen=True)
class ReplayFilters:
    """Which inspections and which kinds of work a replay covers (all kinds by default)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    barcode: str | None = None
    inspection_ids: tuple[int, ...] = ()
    visit: str | None = None
    failed_only: bool = False
    model_changed: bool = False
    rule_changed: bool = False

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"--since {self.since} is after --until {self.until}")
        if self.visit is not None and not _VISIT.match(self.visit):
            raise ConfigError(f"--visit: expected a visit such as mx12345-6, got {self.visit!r}")

    @property
    def reasons(self) -> tuple[str, ...]:
        """The kinds of work asked for: --failed-only, --model-changed and --rule-changed
        narrow (and combine)."""
        if not (self.failed_only or self.model_changed or self.rule_changed):
            return REASONS
        chosen = []
        if self.failed_only:
            chosen.append(FAILED)
        if self.model_changed:
            chosen.append(MODEL_CHANGED)
        if self.rule_changed:
            chosen.append(RULE_CHANGED)
        return tuple(chosen)


@dataclass(frozen=True)
class BacklogInspection:
    """One inspection with work to do, image ids grouped by why they need it."""

    containerInspectionId: int
    containerId: int
    barcode: str | None
    visit: str | None
    completed: dt.datetime | None
    image_count: int
    work: Mapping[str, tuple[int, ...]]  # reason -> image ids (only the reasons asked for)
    failure_reasons: Mapping[str, int] = field(default_factory=dict)  # of the failed images

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(sorted({i for ids in self.work.values() for i in ids}))

    @property
    def up_to_date(self) -> int:
        return self.image_count - len(self.image_ids)


@dataclass(frozen=True)
class Backlog:
    inspections: tuple[BacklogInspection, ...]
    matched: int  # Completed inspections that passed the filters (with work or not)
    images_matched: int  # their images
    model_checksums: frozenset[str] | None
    not_completed: tuple[int, ...] = ()  # --inspection ids that are no Completed inspection
    target_rule: str | None = None  # the configured analyser's rule (None: not compared)

    @property
    def image_count(self) -> int:
        return sum(len(i.image_ids) for i in self.inspections)

    def count(self, reason: str) -> int:
        return sum(len(i.work.get(reason, ())) for i in self.inspections)


@dataclass
class ReplaySummary:
    """What a replay did; printed at the end, also after Ctrl-C."""

    mode: str
    inspections: int = 0
    images_planned: int = 0
    processed: int = 0  # results written (new or changed)
    unchanged: int = 0  # identical result already stored
    failed: Counter[str] = field(default_factory=Counter)  # reason -> images
    skipped: int = 0  # matched but needing no work (up to date, or done meanwhile)
    published: int = 0  # work items confirmed by the broker
    completed_inspections: int = 0
    announced: int = 0  # results-ready events confirmed (--local --announce)
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "inspections": self.inspections,
            "images_planned": self.images_planned,
            "processed": self.processed,
            "unchanged": self.unchanged,
            "failed": dict(sorted(self.failed.items())),
            "skipped": self.skipped,
            "published": self.published,
            "completed_inspections": self.completed_inspections,
            "announced": self.announced,
            "interrupted": self.interrupted,
        }


# --- model checksums -------------------------------------------------------------------------


def _model_file_sha256(path: Path) -> str:
    """``file_sha256`` of a configured model file; a file that cannot be read is a config error."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise ConfigError(f"model file {path}: {exc.strerror or exc}") from None


def current_model_checksums(settings: Settings) -> frozenset[str]:
    """sha256 of the model files the configured analyser would use, without loading torch.

    CHiMP results carry the sha256 of each configured weight file (``checksums.file_sha256``,
    the function the models hash with); the baseline names its own version.
    """
    if settings.effective_analyser == "chimp":
        return frozenset(_model_file_sha256(f.path) for f in configured_model_files(settings))
    from chimp_worker.analysis import AnalysisOptions
    from chimp_worker.baseline import BaselineAnalyser

    baseline = BaselineAnalyser(AnalysisOptions.from_settings(settings))
    return frozenset(model.sha256 for model in baseline.models)


def current_target_rule(settings: Settings) -> str:
    """The target rule results of the configured analyser carry, without loading torch."""
    if settings.effective_analyser == "chimp":
        return settings.target_rule
    from chimp_worker.baseline import BaselineAnalyser

    return BaselineAnalyser.target_rule


# --- finding the backlog ---------------------------------------------------------------------


def _visit_of(row: RowMapping) -> str | None:
    if not row["proposalCode"] or not row["proposalNumber"]:
        return None
    number = row["visit_number"]
    return f"{row['proposalCode']}{row['proposalNumber']}" + (
        f"-{number}" if number is not None else ""
    )


def _inspection_rows(session: Session, filters: ReplayFilters) -> Sequence[RowMapping]:
    """Completed inspections passing ``filters``, with their plate and visit, oldest first."""
    inspection, container = t.ContainerInspection, t.Container
    completed = func.coalesce(inspection.completedTimeStamp, inspection.blTimeStamp)
    statement = (
        select(
            inspection.containerInspectionId,
            inspection.containerId,
            container.barcode,
            completed.label("completed"),
            t.Proposal.proposalCode,
            t.Proposal.proposalNumber,
            t.BLSession.visit_number,
        )
        .select_from(inspection)
        .join(container, container.containerId == inspection.containerId)
        .outerjoin(t.BLSession, t.BLSession.sessionId == container.sessionId)
        .outerjoin(t.Proposal, t.Proposal.proposalId == t.BLSession.proposalId)
        .where(inspection.state == "Completed")
    )
    if filters.since is not None:
        statement = statement.where(completed >= filters.since)
    if filters.until is not None:
        statement = statement.where(completed < filters.until)
    if filters.barcode is not None:
        statement = statement.where(container.barcode == filters.barcode)
    if filters.visit is not None:
        match = _VISIT.match(filters.visit)
        assert match is not None  # checked in ReplayFilters
        statement = statement.where(
            t.Proposal.proposalCode == match.group(1),
            t.Proposal.proposalNumber == match.group(2),
            t.BLSession.visit_number == int(match.group(3)),
        )
    if filters.inspection_ids:
        statement = statement.where(
            inspection.containerInspectionId.in_(list(filters.inspection_ids))
        )
    statement = statement.order_by(completed, inspection.containerInspectionId)
    return session.execute(statement).mappings().all()


def find_backlog(
    session_factory: sessionmaker[Session],
    filters: ReplayFilters,
    model_checksums: Iterable[str] | None,
    target_rule: str | None = None,
) -> Backlog:
    """Completed inspections matching ``filters`` that have images needing the asked work.

    ``model_checksums`` is the configured analyser's set; None skips the model comparison.
    ``target_rule`` is its target rule (``current_target_rule``); None skips that comparison.
    """
    current = frozenset(model_checksums) if model_checksums is not None else None
    reasons = filters.reasons
    with translate_db_errors(), session_factory() as session:
        inspections = _inspection_rows(session, filters)
        ids = [int(row["containerInspectionId"]) for row in inspections]
        images = image_states(session, ids)
        # Model files are compared only when asked for: --rule-changed alone also finds an
        # image whose model files changed too.
        compared = current if MODEL_CHANGED in reasons else None
        shas = image_model_checksums(session, ids) if compared is not None else {}
    by_inspection: dict[int, list[ImageState]] = defaultdict(list)
    for image in images:
        by_inspection[image.containerInspectionId].append(image)
    found = []
    for row in inspections:
        inspection_id = int(row["containerInspectionId"])
        work: dict[str, list[int]] = defaultdict(list)
        failures: Counter[str] = Counter()
        for image in by_inspection.get(inspection_id, []):
            image_id = image.blSampleImageId
            reason = work_reason(
                image.state,
                shas.get(image_id, frozenset()),
                compared,
                image.targetRule,
                target_rule,
            )
            if reason is None or reason not in reasons:
                continue
            work[reason].append(image_id)
            if reason == FAILED:
                failures[image.failureReason or "unknown"] += 1
        if work:
            found.append(
                BacklogInspection(
                    containerInspectionId=inspection_id,
                    containerId=int(row["containerId"]),
                    barcode=row["barcode"],
                    visit=_visit_of(row),
                    completed=as_datetime(row["completed"]),
                    image_count=len(by_inspection.get(inspection_id, [])),
                    work={reason: tuple(sorted(ids)) for reason, ids in work.items()},
                    failure_reasons=dict(failures),
                )
            )
    return Backlog(
        inspections=tuple(found),
        matched=len(inspections),
        images_matched=len(images),
        model_checksums=current,
        not_completed=tuple(sorted(set(filters.inspection_ids) - set(ids))),
        target_rule=target_rule,
    )


def _chunked(ids: Sequence[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(ids[start : start + size]) for start in range(0, len(ids), size)]


def _work_reason(inspection: BacklogInspection) -> str:
    """The WorkItem reason: what most of the inspection's images need (for the daemon's logs)."""
    reason = max(inspection.work, key=lambda name: len(inspection.work[name]))
    return "replay-" + reason.replace(" ", "-")


# --- doing the work --------------------------------------------------------------------------

ItemCallback = Callable[[BacklogInspection, tuple[int, ...]], None]


def publish_backlog(
    backlog: Backlog,
    publisher: Publisher,
    *,
    chunk_size: int,
    priority: int = 0,
    on_item: ItemCallback | None = None,
    summary: ReplaySummary | None = None,
) -> ReplaySummary:
    """Publish one ``WorkItem`` per ``chunk_size`` images; each is confirmed before the next.

    A done inspection is reopened first, so the daemon that finishes its last image completes
    it again and publishes results-ready once more.
    """
    from chimp_worker.events import WorkItem

    summary = summary or ReplaySummary(mode="queue")
    summary.inspections = len(backlog.inspections)
    summary.images_planned = backlog.image_count
    summary.skipped = backlog.images_matched - backlog.image_count
    for inspection in backlog.inspections:
        for chunk in _chunked(inspection.image_ids, chunk_size):
            item = WorkItem(
                containerInspectionId=inspection.containerInspectionId,
                blSampleImageIds=chunk,
                reason=_work_reason(inspection),
                priority=priority,
            )
            publisher.publish(item)
            summary.published += 1
            log.info(
                "replay_published",
                inspection_id=inspection.containerInspectionId,
                images=len(chunk),
                reason=item.reason,
            )
            if on_item is not None:
                on_item(inspection, chunk)
    return summary


def reopen_done_inspections(session_factory: sessionmaker[Session], backlog: Backlog) -> list[int]:
    """Set done inspections with work back to pending, so completion fires once more."""
    from chimp_worker.ispyb.progress import reopen_inspection

    return [
        inspection.containerInspectionId
        for inspection in backlog.inspections
        if reopen_inspection(session_factory, inspection.containerInspectionId)
    ]


def settle_reopened(session_factory: sessionmaker[Session], inspection_ids: Iterable[int]) -> int:
    """Complete again the reopened inspections a stopped replay will not finish.

    A replay reopens done inspections before their work; if it stops (Ctrl-C, a crash, the
    broker gone) before an inspection's work was handed over, nobody would complete it again.
    Its images still all have a result or a recorded failure, so completion succeeds here.
    Returns how many were completed; an unreachable database is logged, not raised (the
    error that stopped the replay is the one to report).
    """
    from chimp_worker.errors import DatabaseUnavailableError
    from chimp_worker.ispyb.progress import try_complete_inspection

    settled = 0
    for inspection_id in inspection_ids:
        try:
            settled += try_complete_inspection(session_factory, inspection_id)
        except DatabaseUnavailableError as error:
            log.warning(
                "replay_reopened_inspection_left", inspection_id=inspection_id, error=str(error)
            )
    return settled


def process_backlog(
    backlog: Backlog,
    pipeline: Pipeline,
    *,
    chunk_size: int,
    on_image: Callable[[ImageProgress], None] | None = None,
    summary: ReplaySummary | None = None,
) -> ReplaySummary:
    """Process every image of the backlog here, ``chunk_size`` images per pipeline call.

    Progress is in the database after every image, so an interruption (KeyboardInterrupt
    propagates out of here) loses at most the image in hand.
    """
    summary = summary or ReplaySummary(mode="local")
    summary.inspections = len(backlog.inspections)
    summary.images_planned = backlog.image_count
    summary.skipped = backlog.images_matched - backlog.image_count

    def count(event: ImageProgress) -> None:
        if event.outcome == "done":
            summary.processed += 1
        elif event.outcome == "unchanged":
            summary.unchanged += 1
        elif event.outcome == "failed":
            summary.failed[event.reason or "unknown"] += 1
        elif event.outcome == "skipped":
            summary.skipped += 1
        if on_image is not None:
            on_image(event)

    for inspection in backlog.inspections:
        for chunk in _chunked(inspection.image_ids, chunk_size):
            outcome = pipeline.process(inspection.containerInspectionId, chunk, progress=count)
            if outcome.completed_inspection:
                summary.completed_inspections += 1
    return summary


def announce_results(
    backlog: Backlog,
    pipeline: Pipeline,
    publisher: Publisher,
    settings: Settings,
    *,
    summary: ReplaySummary,
) -> ReplaySummary:
    """Publish results-ready for each backlog inspection that is done but not yet announced.

    What a daemon does when it completes an inspection, for a ``--local`` replay: confirmed
    by the broker (``mandatory``), then recorded, so a second run announces nothing again.
    """
    from chimp_worker.ispyb.progress import mark_results_published, results_pending_publication

    factory = pipeline.session_factory
    for inspection in backlog.inspections:
        inspection_id = inspection.containerInspectionId
        if not results_pending_publication(factory, inspection_id):
            continue
        event = pipeline.results_ready(inspection_id, inspection.image_count)
        publisher.publish(
            event, exchange=settings.results_exchange, routing_key=settings.results_routing_key
        )
        if mark_results_published(factory, inspection_id):
            summary.announced += 1
        log.info("replay_results_ready_published", inspection_id=inspection_id)
    return summary
