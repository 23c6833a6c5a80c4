"""The worker's own tables: what ISPyB has no place for, keyed to ISPyB's ids.

ISPyB stores what staff act on (class probabilities, queueable crystal targets, the dispense
point). Everything else -- per-image processing state and failures, which model files produced
a result, timings, every detection including drop boxes, per-inspection completion -- lives
here, in ``chimp_*`` tables on their own metadata and their own migration history, the only
schema change the worker ever makes on a facility database.

There are deliberately no foreign keys into ISPyB tables: the migration then never alters,
locks or needs REFERENCES rights on facility tables, and ISPyB's own clean-ups are never
blocked by the worker. Columns are camelCase like ISPyB's so staff can join them naturally:
``chimp_image_result.blSampleImageId = BLSampleImage.blSampleImageId``.
"""

from __future__ import annotations

import datetime

from sqlalchemy import CheckConstraint, DateTime, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chimp_worker.ispyb.tables import int_

IMAGE_STATES = ("pending", "done", "failed")
INSPECTION_STATES = ("pending", "done")
DISPENSE_STATUSES = ("ok", "no drop", "no safe point")  # analysis.DispenseStatus values


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class WorkerBase(DeclarativeBase):
    """Metadata of the worker's own tables (the ``worker`` migration history)."""


class ChimpImageResult(WorkerBase):
    """One row per BLSampleImage the worker has seen: its state and the result's summary."""

    __tablename__ = "chimp_image_result"
    __table_args__ = (
        CheckConstraint(_in("state", IMAGE_STATES), name="chimp_image_result_state_ck"),
        CheckConstraint(
            "dispenseStatus IS NULL OR " + _in("dispenseStatus", DISPENSE_STATUSES),
            name="chimp_image_result_dispense_ck",
        ),
        Index("chimp_image_result_inspection_idx", "containerInspectionId", "state"),
        {"comment": "chimp-worker: processing state and result summary per BLSampleImage"},
    )

    blSampleImageId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    containerInspectionId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    state: Mapped[str] = mapped_column(String(8), comment="pending | done | failed")
    analyser: Mapped[str | None] = mapped_column(String(32), comment="chimp or baseline")
    schemaName: Mapped[str | None] = mapped_column(
        String(25), comment="BLSampleImageAutoScoreSchema.schemaName written under"
    )
    topClass: Mapped[str | None] = mapped_column(String(32))
    topProbability: Mapped[float | None] = mapped_column(Float())
    crystalCount: Mapped[int | None] = mapped_column(Integer(), comment="crystal targets")
    dropCount: Mapped[int | None] = mapped_column(Integer(), comment="drop detections")
    dispenseStatus: Mapped[str | None] = mapped_column(
        String(16), comment="ok | no drop | no safe point; NULL when no drop detector ran"
    )
    dispenseX: Mapped[int | None] = mapped_column(Integer())
    dispenseY: Mapped[int | None] = mapped_column(Integer())
    dispenseClearancePx: Mapped[float | None] = mapped_column(Float())
    dropsSeen: Mapped[int | None] = mapped_column(Integer())
    blSamplePositionId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="the BLSamplePosition row this result wrote"
    )
    imageWidth: Mapped[int | None] = mapped_column(Integer())
    imageHeight: Mapped[int | None] = mapped_column(Integer())
    timingsJson: Mapped[str | None] = mapped_column(Text(), comment="stage -> milliseconds")
    totalMs: Mapped[float | None] = mapped_column(Float())
    resultDigest: Mapped[str | None] = mapped_column(
        String(64), comment="sha256 of the result (timings excluded): same digest, no rewrite"
    )
    failureReason: Mapped[str | None] = mapped_column(String(64))
    failureDetail: Mapped[str | None] = mapped_column(Text())
    attempts: Mapped[int] = mapped_column(
        Integer(), server_default=text("0"), comment="writes and failures that changed the row"
    )
    createdAt: Mapped[datetime.datetime] = mapped_column(DateTime())
    updatedAt: Mapped[datetime.datetime] = mapped_column(DateTime())
    # Last, where the migration that added it puts it (worker_0004).
    targetRule: Mapped[str | None] = mapped_column(
        String(16),
        comment="published | original: how targets and the dispense point were computed",
    )


class ChimpImageModel(WorkerBase):
    """Which model file (by sha256) produced an image's current result, one row per role."""

    __tablename__ = "chimp_image_model"
    __table_args__ = (
        Index("chimp_image_model_sha256_idx", "sha256"),
        {"comment": "chimp-worker: model name and weight-file sha256 behind each result"},
    )

    blSampleImageId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    modelName: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))


class ChimpDetection(WorkerBase):
    """Every kept detection of an image's current result: crystals and drops alike."""

    __tablename__ = "chimp_detection"
    __table_args__ = (
        Index("chimp_detection_image_idx", "blSampleImageId", "detectionIndex", unique=True),
        {"comment": "chimp-worker: every kept detection (class, score, box, mask area, centroid)"},
    )

    chimpDetectionId: Mapped[int] = mapped_column(int_(11, unsigned=True), primary_key=True)
    blSampleImageId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    detectionIndex: Mapped[int] = mapped_column(Integer())
    label: Mapped[str] = mapped_column(String(16), comment="crystal or drop")
    score: Mapped[float] = mapped_column(Float())
    boxX0: Mapped[float] = mapped_column(Float())
    boxY0: Mapped[float] = mapped_column(Float())
    boxX1: Mapped[float] = mapped_column(Float())
    boxY1: Mapped[float] = mapped_column(Float())
    maskArea: Mapped[int] = mapped_column(Integer())
    centroidX: Mapped[int | None] = mapped_column(Integer())
    centroidY: Mapped[int | None] = mapped_column(Integer())
    blSubSampleId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="the auto BLSubSample written for this crystal target"
    )


class ChimpInspection(WorkerBase):
    """Per-inspection completion: flipped to done exactly once, by a conditional UPDATE.

    Completion is two-phase: ``completedAt`` commits first, ``resultsPublishedAt`` only after
    the broker confirmed results-ready, so a worker killed in between leaves a visible debt
    that the redelivered message pays.
    """

    __tablename__ = "chimp_inspection"
    __table_args__ = (
        CheckConstraint(_in("state", INSPECTION_STATES), name="chimp_inspection_state_ck"),
        {"comment": "chimp-worker: completion of each ContainerInspection"},
    )

    containerInspectionId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    state: Mapped[str] = mapped_column(String(8), comment="pending | done")
    imageCount: Mapped[int | None] = mapped_column(Integer())
    doneCount: Mapped[int | None] = mapped_column(Integer())
    failedCount: Mapped[int | None] = mapped_column(Integer())
    createdAt: Mapped[datetime.datetime] = mapped_column(DateTime())
    completedAt: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    resultsPublishedAt: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(),
        comment="when the broker confirmed results-ready; NULL while done: still owed",
    )
