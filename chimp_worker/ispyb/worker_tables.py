"""The worker's own tables: what ISPyB has no place for, keyed to ISPyB's ids.

ISPyB stores what staff act on (class probabilities, queueable crystal targets, the dispense
point). Everything else -- per-image processing state and failures, which model files produced
a result, timings, every detection including drop boxes, per-inspection completion, and which
ISPyB rows the worker wrote (so re-processing never takes staff's rows for its own) -- lives
here, in ``chimp_*`` tables on their own metadata and their own migration history, the only
schema change the worker ever makes on a facility database.

There are deliberately no foreign keys into ISPyB tables: the migration then never alters,
locks or needs REFERENCES rights on facility tables, and ISPyB's own clean-ups are never
blocked by the worker. Columns are camelCase like ISPyB's so staff can join them naturally:
``chimp_image_result.blSampleImageId = BLSampleImage.blSampleImageId``.
"""

from __future__ import annotations

import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Float,
    Index,
    Integer,
    String,
    Text,
    text,
)
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
    modelRole: Mapped[str | None] = mapped_column(
        String(32), comment="the model that found it (vmxi_detector, xchem_detector...)"
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


ISPYB_ROW_TABLES = ("BLSubSample", "BLSamplePosition")


class ChimpIspybRow(WorkerBase):
    """Every ISPyB row the worker inserted and that still exists, with the values it wrote.

    Re-processing needs to know which rows are the worker's, which analyser made them and
    whether staff changed them since: ISPyB cannot tell (auto sub-samples carry no analyser,
    dispense points carry no author). A row whose ``posX``/``posY`` no longer match ISPyB's was
    moved or edited by staff. ``keptReason`` says why re-processing kept a row it would
    otherwise have replaced ("queued by staff", "data collected", "edited by staff"...).
    """

    __tablename__ = "chimp_ispyb_row"
    __table_args__ = (
        CheckConstraint(_in("tableName", ISPYB_ROW_TABLES), name="chimp_ispyb_row_table_ck"),
        Index("chimp_ispyb_row_image_idx", "blSampleImageId"),
        Index("chimp_ispyb_row_sample_idx", "blSampleId", "tableName"),
        {"comment": "chimp-worker: ISPyB rows it wrote (sub-samples, dispense points), kept why"},
    )

    tableName: Mapped[str] = mapped_column(
        String(32), primary_key=True, comment="BLSubSample or BLSamplePosition"
    )
    rowId: Mapped[int] = mapped_column(
        int_(11, unsigned=True),
        primary_key=True,
        autoincrement=False,
        comment="blSubSampleId or blSamplePositionId",
    )
    blSampleId: Mapped[int] = mapped_column(int_(10, unsigned=True))
    blSampleImageId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), comment="the image whose result wrote the row"
    )
    analyser: Mapped[str] = mapped_column(String(32), comment="chimp or baseline")
    posX: Mapped[float | None] = mapped_column(Double(), comment="x as written, image pixels")
    posY: Mapped[float | None] = mapped_column(Double(), comment="y as written, image pixels")
    score: Mapped[float | None] = mapped_column(Float(), comment="detector score of a target")
    createdAt: Mapped[datetime.datetime] = mapped_column(DateTime())
    keptReason: Mapped[str | None] = mapped_column(
        String(64), comment="why re-processing kept it, e.g. 'queued by staff'; NULL: current"
    )
    keptAt: Mapped[datetime.datetime | None] = mapped_column(DateTime())


class ChimpDropInspection(WorkerBase):
    """One drop in one inspection as the hit rule saw it: a point of the drop's time course.

    Written when the inspection completes (``ispyb.time_course``), from the image's stored
    result; rewritten only when a value changes, so a re-run leaves the rows as they were.
    """

    __tablename__ = "chimp_drop_inspection"
    __table_args__ = (
        Index("chimp_drop_inspection_container_idx", "containerId", "inspectionNumber"),
        Index("chimp_drop_inspection_inspection_idx", "containerInspectionId"),
        {"comment": "chimp-worker: each drop's time course, one row per inspection"},
    )

    blSampleId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    containerInspectionId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    containerId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    blSampleImageId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    inspectionNumber: Mapped[int] = mapped_column(
        Integer(), comment="1-based, time order of the plate's Completed inspections"
    )
    inspectedAt: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    analyser: Mapped[str | None] = mapped_column(String(32))
    pCrystal: Mapped[float | None] = mapped_column(Double(), comment="NULL: no classifier ran")
    crystalCount: Mapped[int] = mapped_column(Integer(), comment="crystals the hit rule counts")
    crystalAreaPx: Mapped[int] = mapped_column(Integer(), comment="their summed mask areas")
    crystalAreaUm2: Mapped[float | None] = mapped_column(
        Double(), comment="crystalAreaPx * micronsPerPixelX * micronsPerPixelY"
    )
    largestCrystalUm2: Mapped[float | None] = mapped_column(Double())
    bestCrystalScore: Mapped[float | None] = mapped_column(Double())
    hitScore: Mapped[float] = mapped_column(Double(), comment="0..1, the rule's score")
    isHit: Mapped[bool] = mapped_column(Boolean(create_constraint=False))
    hitRule: Mapped[str] = mapped_column(String(16), comment="combined | classifier | detector")
    updatedAt: Mapped[datetime.datetime] = mapped_column(DateTime())


class ChimpDropCourse(WorkerBase):
    """Per drop: when it first became a hit, where it stands now, its growth and promise."""

    __tablename__ = "chimp_drop_course"
    __table_args__ = (
        Index("chimp_drop_course_container_idx", "containerId", "promise"),
        Index("chimp_drop_course_first_hit_idx", "firstHitInspectionId"),
        {"comment": "chimp-worker: each drop's first hit, latest state, growth and promise"},
    )

    blSampleId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    containerId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    inspections: Mapped[int] = mapped_column(Integer(), comment="inspections observed")
    firstHitInspectionId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    firstHitInspection: Mapped[int | None] = mapped_column(
        Integer(), comment="its inspectionNumber (1-based, time order)"
    )
    firstHitAt: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    firstHitScore: Mapped[float | None] = mapped_column(Double())
    firstHitAreaUm2: Mapped[float | None] = mapped_column(Double())
    latestInspectionId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    latestInspection: Mapped[int] = mapped_column(Integer())
    latestAt: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    isHit: Mapped[bool] = mapped_column(
        Boolean(create_constraint=False), comment="a hit at the latest inspection"
    )
    score: Mapped[float] = mapped_column(Double(), comment="hit score at the latest inspection")
    pCrystal: Mapped[float | None] = mapped_column(Double())
    crystalCount: Mapped[int] = mapped_column(Integer())
    crystalAreaPx: Mapped[int] = mapped_column(Integer())
    crystalAreaUm2: Mapped[float | None] = mapped_column(Double())
    growthUm2: Mapped[float | None] = mapped_column(
        Double(), comment="crystal area now minus at the first hit (um^2, else px)"
    )
    growthFactor: Mapped[float | None] = mapped_column(Double())
    promise: Mapped[float] = mapped_column(Double(), comment="0..1: score, size and growth")
    updatedAt: Mapped[datetime.datetime] = mapped_column(DateTime())
