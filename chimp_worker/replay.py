"""Replay a backlog: find Completed inspections whose images still need work and do it.

An image needs work when it has no result yet ("unprocessed"), its last attempt failed
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
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.errors import ConfigError
from chimp_worker.ispyb.database import translate_db_errors
from chimp_worker.ispyb.queries import as_datetime
from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from chimp_worker.broker import Publisher
    from chimp_worker.config import Settings
    from chimp_worker.pipeline import ImageProgress, Pipeline

log = get_logger(__name__)

UNPROCESSED = "unprocessed"
FAILED = "failed"
MODEL_CHANGED = "model changed"
RULE_CHANGED = "rule changed"
REASONS = (UNPROCESSED, FAILED, MODEL_CHANGED, RULE_CHANGED)

_VISIT = re.compile(r"^([A-Za-z]+)(\d+)-(\d+)$")
_IN_CHUNK = 500

# Completed inspections with their plate and visit; filters are appended as AND clauses.
INSPECTIONS_SQL = """
SELECT ci.containerInspectionId, ci.containerId, c.barcode,
       COALESCE(ci.completedTimeStamp, ci.blTimeStamp) AS completed,
       p.proposalCode, p.proposalNumber, bs.visit_number
FROM ContainerInspection ci
JOIN Container c ON c.containerId = ci.containerId
LEFT JOIN BLSession bs ON bs.sessionId = c.sessionId
LEFT JOIN Proposal p ON p.proposalId = bs.proposalId
WHERE ci.state = 'Completed'
"""

IMAGES_SQL = """
SELECT si.containerInspectionId, si.blSampleImageId, r.state, r.failureReason, r.targetRule
FROM BLSampleImage si
LEFT JOIN chimp_image_result r ON r.blSampleImageId = si.blSampleImageId
WHERE si.containerInspectionId IN :inspectionIds
"""

MODELS_SQL = """
SELECT m.blSampleImageId, m.sha256
FROM chimp_image_model m
JOIN BLSampleImage si ON si.blSampleImageId = m.blSampleImageId
WHERE si.containerInspectionId IN :inspectionIds
"""


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigError(f"model file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def current_model_checksums(settings: Settings) -> frozenset[str]:
    """sha256 of the model files the configured analyser would use, without loading torch.

    CHiMP results carry the sha256 of each configured weight file (the same streaming hash as
    ``models.checkpoints.file_sha256``); the baseline names its own version.
    """
    if settings.effective_analyser == "chimp":
        from chimp_worker.detector_kinds import configured_model_files

        return frozenset(_file_sha256(f.path) for f in configured_model_files(settings))
    from chimp_worker.baseline import BaselineAnalyser

    return frozenset(model.sha256 for model in BaselineAnalyser(settings).models)


def current_target_rule(settings: Settings) -> str:
    """The target rule results of the configured analyser carry, without loading torch."""
    if settings.effective_analyser == "chimp":
        return settings.target_rule
    from chimp_worker.baseline import BaselineAnalyser

    return BaselineAnalyser.target_rule


# --- finding the backlog ---------------------------------------------------------------------


def _visit_of(row: Mapping[str, Any]) -> str | None:
    if not row["proposalCode"] or not row["proposalNumber"]:
        return None
    number = row["visit_number"]
    return f"{row['proposalCode']}{row['proposalNumber']}" + (
        f"-{number}" if number is not None else ""
    )


def _inspection_rows(session: Session, filters: ReplayFilters) -> list[Mapping[str, Any]]:
    sql = INSPECTIONS_SQL
    params: dict[str, Any] = {}
    completed = "COALESCE(ci.completedTimeStamp, ci.blTimeStamp)"
    if filters.since is not None:
        sql += f" AND {completed} >= :since"
        params["since"] = filters.since
    if filters.until is not None:
        sql += f" AND {completed} < :until"
        params["until"] = filters.until
    if filters.barcode is not None:
        sql += " AND c.barcode = :barcode"
        params["barcode"] = filters.barcode
    if filters.visit is not None:
        match = _VISIT.match(filters.visit)
        assert match is not None  # checked in ReplayFilters
        sql += (
            " AND p.proposalCode = :proposalCode AND p.proposalNumber = :proposalNumber"
            " AND bs.visit_number = :visitNumber"
        )
        params.update(
            proposalCode=match.group(1),
            proposalNumber=match.group(2),
            visitNumber=int(match.group(3)),
        )
    statement = text(sql + " ORDER BY completed, ci.containerInspectionId")
    if filters.inspection_ids:
        statement = text(
            sql
            + " AND ci.containerInspectionId IN :inspectionIds"
            + " ORDER BY completed, ci.containerInspectionId"
        ).bindparams(bindparam("inspectionIds", expanding=True))
        params["inspectionIds"] = list(filters.inspection_ids)
    return list(session.execute(statement, params).mappings().all())


def _per_inspection(
    session: Session, sql: str, inspection_ids: Sequence[int]
) -> list[Mapping[str, Any]]:
    statement = text(sql).bindparams(bindparam("inspectionIds", expanding=True))
    rows: list[Mapping[str, Any]] = []
    for start in range(0, len(inspection_ids), _IN_CHUNK):
        chunk = list(inspection_ids[start : start + _IN_CHUNK])
        rows.extend(session.execute(statement, {"inspectionIds": chunk}).mappings().all())
    return rows


def classify_image(
    state: str | None,
    checksums: frozenset[str],
    current: frozenset[str] | None,
    rule: str | None = None,
    current_rule: str | None = None,
) -> str | None:
    """Why an image needs work (a REASONS value), or None when it is up to date.

    A 'pending' row is an image planned but never finished: as unprocessed as no row at all.
    A done result's stored target ``rule`` is compared with ``current_rule`` unless that is
    None; new model files win over a new rule (the redo covers both).
    """
    if state == "done":
        if current is not None and checksums != current:
            return MODEL_CHANGED
        if current_rule is not None and rule != current_rule:
            return RULE_CHANGED
        return None
    if state == "failed":
        return FAILED
    return UNPROCESSED


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
        images = _per_inspection(session, IMAGES_SQL, ids)
        shas: dict[int, set[str]] = defaultdict(set)
        # Model files are compared only when asked for: --rule-changed alone also finds an
        # image whose model files changed too.
        compared = current if MODEL_CHANGED in reasons else None
        if compared is not None:
            for row in _per_inspection(session, MODELS_SQL, ids):
                shas[int(row["blSampleImageId"])].add(row["sha256"])
    by_inspection: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in images:
        by_inspection[int(row["containerInspectionId"])].append(row)
    found = []
    for row in inspections:
        inspection_id = int(row["containerInspectionId"])
        work: dict[str, list[int]] = defaultdict(list)
        failures: Counter[str] = Counter()
        for image in by_inspection.get(inspection_id, []):
            image_id = int(image["blSampleImageId"])
            reason = classify_image(
                image["state"],
                frozenset(shas.get(image_id, ())),
                compared,
                image["targetRule"],
                target_rule,
            )
            if reason is None or reason not in reasons:
                continue
            work[reason].append(image_id)
            if reason == FAILED:
                failures[image["failureReason"] or "unknown"] += 1
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
