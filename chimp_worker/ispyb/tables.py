"""The ISPyB core tables the worker reads and writes, as SQLAlchemy 2 declarative models.

Transcribed column by column from the facility's own ORM (``ispyb.sqlalchemy``, schema 5.x):
same table and column names, nullability and MariaDB types, so the code that runs here runs
unchanged against a real ISPyB. ``tests/ispyb/test_facility_orm.py`` holds us to that.

Why not import ``ispyb.sqlalchemy`` directly: its metadata spans ~250 tables with foreign keys
everywhere, cannot be created on SQLite, and its integer keys lose ``UNSIGNED`` (InnoDB refuses
a foreign key between a signed and an unsigned column). Here:

- integers are generic ``Integer`` with a MariaDB variant carrying the real width and
  signedness (keys are ``UNSIGNED`` as in the real schema), so the same metadata creates on
  SQLite for tests and the embedded default;
- foreign keys are kept only between tables defined here (the real ones, by name); columns
  that point elsewhere (``Dewar``, ``Person``, ``ScheduleComponent``...) stay, unconstrained;
- index names are unique across the database (SQLite's namespace is global): the one clash,
  ``BLSample``'s ``BLSampleImage_idx1``, is renamed ``BLSample_blSubSampleId_idx``;
- ``Container.source`` and ``BLSample.source`` lose their ``current_user()`` default, which
  SQLite cannot express;
- ``Position.X/Y/Z`` are generated from ``posX/posY/posZ``: the ORM never writes them.

These tables are created only in development, test and embedded databases (the ``core``
Alembic history); against a real ISPyB only the worker's own ``chimp_*`` tables are migrated.
"""

from __future__ import annotations

import datetime

from sqlalchemy import (
    TIMESTAMP,
    Computed,
    DateTime,
    Double,
    Enum,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

MYSQL_DIALECTS = ("mysql", "mariadb")


class Base(DeclarativeBase):
    """Metadata of the ISPyB core subset (the ``core`` migration history)."""


def int_(width: int = 11, *, unsigned: bool = False) -> TypeEngine[int]:
    """``int(width) [unsigned]`` on MariaDB, plain INTEGER elsewhere."""
    return Integer().with_variant(
        mysql.INTEGER(display_width=width, unsigned=unsigned), *MYSQL_DIALECTS
    )


def binary(length: int) -> TypeEngine[bytes]:
    """``binary(length)`` on MariaDB; BLOB on SQLite (which has no fixed-length binary type)."""
    return LargeBinary().with_variant(mysql.BINARY(length), *MYSQL_DIALECTS)


def tinyint(width: int = 1, *, unsigned: bool = False) -> TypeEngine[int]:
    return Integer().with_variant(
        mysql.TINYINT(display_width=width, unsigned=unsigned), *MYSQL_DIALECTS
    )


def smallint(width: int = 6, *, unsigned: bool = False) -> TypeEngine[int]:
    return Integer().with_variant(
        mysql.SMALLINT(display_width=width, unsigned=unsigned), *MYSQL_DIALECTS
    )


def mediumint(width: int = 9, *, unsigned: bool = False) -> TypeEngine[int]:
    return Integer().with_variant(
        mysql.MEDIUMINT(display_width=width, unsigned=unsigned), *MYSQL_DIALECTS
    )


class Proposal(Base):
    __tablename__ = "Proposal"
    __table_args__ = (
        Index("Proposal_FKIndex1", "personId"),
        Index("Proposal_FKIndexCodeNumber", "proposalCode", "proposalNumber", unique=True),
    )

    proposalId: Mapped[int] = mapped_column(int_(10, unsigned=True), primary_key=True)
    personId: Mapped[int] = mapped_column(int_(10, unsigned=True), server_default=text("0"))
    bltimeStamp: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP(), server_default=text("CURRENT_TIMESTAMP")
    )
    title: Mapped[str | None] = mapped_column(String(200))
    proposalCode: Mapped[str | None] = mapped_column(String(45))
    proposalNumber: Mapped[str | None] = mapped_column(String(45))
    proposalType: Mapped[str | None] = mapped_column(String(2), comment="Proposal type: MX, BX")
    externalId: Mapped[bytes | None] = mapped_column(binary(16))
    state: Mapped[str | None] = mapped_column(
        Enum("Open", "Closed", "Cancelled", native_enum=True, create_constraint=False),
        server_default=text("'Open'"),
    )
    startDate: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(), comment="Start of the allocation period"
    )
    endDate: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(), comment="End of the allocation period"
    )


class BLSession(Base):
    __tablename__ = "BLSession"
    __table_args__ = (
        ForeignKeyConstraint(
            ["proposalId"],
            ["Proposal.proposalId"],
            name="BLSession_ibfk_1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        Index("BLSession_fk_beamCalendarId", "beamCalendarId"),
        Index("Session_FKIndex2", "beamLineSetupId"),
        Index("Session_FKIndexBeamLineName", "beamLineName"),
        Index("Session_FKIndexEndDate", "endDate"),
        Index("Session_FKIndexStartDate", "startDate"),
        Index("proposalId", "proposalId", "visit_number", unique=True),
    )

    sessionId: Mapped[int] = mapped_column(int_(10, unsigned=True), primary_key=True)
    proposalId: Mapped[int] = mapped_column(int_(10, unsigned=True), server_default=text("0"))
    bltimeStamp: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP(), server_default=text("CURRENT_TIMESTAMP")
    )
    lastUpdate: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP(),
        server_default=text("CURRENT_TIMESTAMP"),
        comment="last update timestamp: by default the end of the session, the last collect...",
    )
    beamLineSetupId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    beamCalendarId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    startDate: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    endDate: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    beamLineName: Mapped[str | None] = mapped_column(String(45))
    scheduled: Mapped[int | None] = mapped_column(tinyint(1))
    nbShifts: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    comments: Mapped[str | None] = mapped_column(String(2000))
    beamLineOperator: Mapped[str | None] = mapped_column(String(255))
    visit_number: Mapped[int | None] = mapped_column(
        int_(10, unsigned=True), server_default=text("0")
    )
    usedFlag: Mapped[int | None] = mapped_column(
        tinyint(1),
        comment="indicates if session has Datacollections or XFE or EnergyScans attached",
    )
    externalId: Mapped[bytes | None] = mapped_column(binary(16))
    archived: Mapped[int | None] = mapped_column(
        tinyint(1),
        server_default=text("0"),
        comment="The data for the session is archived and no longer available on disk",
    )
    riskRating: Mapped[str | None] = mapped_column(
        Enum("Low", "Medium", "High", "Not Permitted", native_enum=True, create_constraint=False),
        comment="ERA in user admin system",
    )
    purgedProcessedData: Mapped[int | None] = mapped_column(
        tinyint(1),
        server_default=text("0"),
        comment=(
            "Flag to indicate whether the processed folder in the associated visit "
            "directory has been purged"
        ),
    )
    icatId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="The internal ICAT ID for this BLSession"
    )


class Imager(Base):
    __tablename__ = "Imager"

    imagerId: Mapped[int] = mapped_column(int_(11, unsigned=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(45))
    temperature: Mapped[float | None] = mapped_column(Float())
    serial: Mapped[str | None] = mapped_column(String(45))
    capacity: Mapped[int | None] = mapped_column(smallint(6))


class InspectionType(Base):
    __tablename__ = "InspectionType"

    inspectionTypeId: Mapped[int] = mapped_column(int_(11, unsigned=True), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(45))


class ContainerType(Base):
    __tablename__ = "ContainerType"
    __table_args__ = ({"comment": "A lookup table for different types of containers"},)

    containerTypeId: Mapped[int] = mapped_column(int_(10, unsigned=True), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    proposalType: Mapped[str | None] = mapped_column(String(10))
    active: Mapped[int | None] = mapped_column(
        tinyint(1), server_default=text("1"), comment="1=active, 0=inactive"
    )
    capacity: Mapped[int | None] = mapped_column(int_(11))
    wellPerRow: Mapped[int | None] = mapped_column(smallint(6))
    dropPerWellX: Mapped[int | None] = mapped_column(smallint(6))
    dropPerWellY: Mapped[int | None] = mapped_column(smallint(6))
    dropHeight: Mapped[float | None] = mapped_column(Float())
    dropWidth: Mapped[float | None] = mapped_column(Float())
    dropOffsetX: Mapped[float | None] = mapped_column(Float())
    dropOffsetY: Mapped[float | None] = mapped_column(Float())
    wellDrop: Mapped[int | None] = mapped_column(smallint(6))


class Container(Base):
    __tablename__ = "Container"
    __table_args__ = (
        ForeignKeyConstraint(
            ["parentContainerId"], ["Container.containerId"], name="Container_fk_parentContainerId"
        ),
        ForeignKeyConstraint(
            ["containerTypeId"], ["ContainerType.containerTypeId"], name="Container_ibfk10"
        ),
        ForeignKeyConstraint(["imagerId"], ["Imager.imagerId"], name="Container_ibfk4"),
        ForeignKeyConstraint(
            ["sessionId"],
            ["BLSession.sessionId"],
            name="Container_ibfk6",
            ondelete="SET NULL",
            onupdate="CASCADE",
        ),
        ForeignKeyConstraint(["requestedImagerId"], ["Imager.imagerId"], name="Container_ibfk7"),
        Index("Container_FKIndex", "beamlineLocation"),
        Index("Container_FKIndex1", "dewarId"),
        Index("Container_FKIndexStatus", "containerStatus"),
        Index("Container_UNIndex1", "barcode", unique=True),
        Index("Container_fk_currentDewarId", "currentDewarId"),
        Index("Container_fk_experimentTypeId", "experimentTypeId"),
        Index("Container_fk_parentContainerId", "parentContainerId"),
        Index("Container_ibfk10", "containerTypeId"),
        Index("Container_ibfk2", "screenId"),
        Index("Container_ibfk3", "scheduleId"),
        Index("Container_ibfk4", "imagerId"),
        Index("Container_ibfk5", "ownerId"),
        Index("Container_ibfk6", "sessionId"),
        Index("Container_ibfk7", "requestedImagerId"),
        Index("Container_ibfk8", "containerRegistryId"),
        Index("Container_ibfk9", "priorityPipelineId"),
    )

    containerId: Mapped[int] = mapped_column(int_(10, unsigned=True), primary_key=True)
    dewarId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    code: Mapped[str | None] = mapped_column(String(45))
    containerType: Mapped[str | None] = mapped_column(String(20))
    capacity: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    sampleChangerLocation: Mapped[str | None] = mapped_column(String(20))
    containerStatus: Mapped[str | None] = mapped_column(String(45))
    bltimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    beamlineLocation: Mapped[str | None] = mapped_column(String(20))
    screenId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    scheduleId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    barcode: Mapped[str | None] = mapped_column(String(45))
    imagerId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    sessionId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    ownerId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    requestedImagerId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    requestedReturn: Mapped[int | None] = mapped_column(
        tinyint(1),
        server_default=text("0"),
        comment="True for requesting return, False means container will be disposed",
    )
    comments: Mapped[str | None] = mapped_column(String(255))
    experimentType: Mapped[str | None] = mapped_column(String(20))
    storageTemperature: Mapped[float | None] = mapped_column(Float(), comment="NULL=ambient")
    containerRegistryId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    scLocationUpdated: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    priorityPipelineId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True),
        server_default=text("6"),
        comment="Processing pipeline to prioritise, defaults to 6 which is xia2/DIALS",
    )
    experimentTypeId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    containerTypeId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    currentDewarId: Mapped[int | None] = mapped_column(
        int_(10, unsigned=True),
        comment="The dewar with which the container is currently associated",
    )
    parentContainerId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    source: Mapped[str | None] = mapped_column(String(50))
    parentContainerLocation: Mapped[int | None] = mapped_column(
        int_(10, unsigned=True),
        comment="Indicates where inside the parent container this container is located",
    )


class ContainerInspection(Base):
    __tablename__ = "ContainerInspection"
    __table_args__ = (
        ForeignKeyConstraint(
            ["containerId"],
            ["Container.containerId"],
            name="ContainerInspection_fk1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        ForeignKeyConstraint(
            ["inspectionTypeId"],
            ["InspectionType.inspectionTypeId"],
            name="ContainerInspection_fk2",
        ),
        ForeignKeyConstraint(["imagerId"], ["Imager.imagerId"], name="ContainerInspection_fk3"),
        Index("ContainerInspection_fk4", "scheduleComponentid"),
        Index("ContainerInspection_idx2", "inspectionTypeId"),
        Index("ContainerInspection_idx3", "imagerId"),
        Index("ContainerInspection_idx4", "containerId", "scheduleComponentid", "state", "manual"),
    )

    containerInspectionId: Mapped[int] = mapped_column(int_(11, unsigned=True), primary_key=True)
    containerId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    inspectionTypeId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    imagerId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    temperature: Mapped[float | None] = mapped_column(Float())
    blTimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    scheduleComponentid: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    state: Mapped[str | None] = mapped_column(String(20))
    priority: Mapped[int | None] = mapped_column(smallint(6))
    manual: Mapped[int | None] = mapped_column(tinyint(1))
    scheduledTimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    completedTimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())


class BLSample(Base):
    __tablename__ = "BLSample"
    __table_args__ = (
        ForeignKeyConstraint(
            ["containerId"],
            ["Container.containerId"],
            name="BLSample_ibfk_1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        Index("BLSample_blSubSampleId_idx", "blSubSampleId"),
        Index("BLSample_FKIndex1", "containerId"),
        Index("BLSample_FKIndex3", "diffractionPlanId"),
        Index("BLSample_FKIndex_Status", "blSampleStatus"),
        Index("BLSample_Index1", "name"),
        Index("BLSample_fk5", "screenComponentGroupId"),
        Index(
            "BLSample_uidx_containerId_location_subLocation",
            "containerId",
            "location",
            "subLocation",
            unique=True,
        ),
        Index("crystalId", "crystalId", "containerId"),
    )

    blSampleId: Mapped[int] = mapped_column(int_(10, unsigned=True), primary_key=True)
    recordTimeStamp: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP(),
        server_default=text("CURRENT_TIMESTAMP"),
        comment="Creation or last update date/time",
    )
    diffractionPlanId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    crystalId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    containerId: Mapped[int | None] = mapped_column(int_(10, unsigned=True))
    name: Mapped[str | None] = mapped_column(String(45))
    code: Mapped[str | None] = mapped_column(String(45))
    location: Mapped[str | None] = mapped_column(String(45))
    holderLength: Mapped[float | None] = mapped_column(Double())
    loopLength: Mapped[float | None] = mapped_column(Double())
    loopType: Mapped[str | None] = mapped_column(String(45))
    wireWidth: Mapped[float | None] = mapped_column(Double())
    comments: Mapped[str | None] = mapped_column(String(1024))
    completionStage: Mapped[str | None] = mapped_column(String(45))
    structureStage: Mapped[str | None] = mapped_column(String(45))
    publicationStage: Mapped[str | None] = mapped_column(String(45))
    publicationComments: Mapped[str | None] = mapped_column(String(255))
    blSampleStatus: Mapped[str | None] = mapped_column(String(20))
    isInSampleChanger: Mapped[int | None] = mapped_column(tinyint(1))
    lastKnownCenteringPosition: Mapped[str | None] = mapped_column(String(255))
    POSITIONID: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    SMILES: Mapped[str | None] = mapped_column(
        String(400), comment="the symbolic description of the structure of a chemical compound"
    )
    blSubSampleId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    lastImageURL: Mapped[str | None] = mapped_column(String(255))
    screenComponentGroupId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    volume: Mapped[float | None] = mapped_column(Float())
    dimension1: Mapped[float | None] = mapped_column(Double())
    dimension2: Mapped[float | None] = mapped_column(Double())
    dimension3: Mapped[float | None] = mapped_column(Double())
    shape: Mapped[str | None] = mapped_column(String(15))
    packingFraction: Mapped[float | None] = mapped_column(Float())
    preparationTemeprature: Mapped[int | None] = mapped_column(
        mediumint(9), comment="Sample preparation temperature, Units: kelvin"
    )
    preparationHumidity: Mapped[float | None] = mapped_column(
        Float(), comment="Sample preparation humidity, Units: %"
    )
    blottingTime: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="Blotting time, Units: sec"
    )
    blottingForce: Mapped[float | None] = mapped_column(
        Float(), comment="Force used when blotting sample, Units: N?"
    )
    blottingDrainTime: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="Time sample left to drain after blotting, Units: sec"
    )
    support: Mapped[str | None] = mapped_column(String(50), comment="Sample support material")
    subLocation: Mapped[int | None] = mapped_column(
        smallint(5, unsigned=True),
        comment=(
            "Indicates the sample's location on a multi-sample pin, where 1 is closest "
            "to the pin base"
        ),
    )
    staffComments: Mapped[str | None] = mapped_column(
        String(255), comment="Any staff comments on the sample"
    )
    source: Mapped[str | None] = mapped_column(String(50))


class BLSampleImage(Base):
    __tablename__ = "BLSampleImage"
    __table_args__ = (
        ForeignKeyConstraint(["blSampleId"], ["BLSample.blSampleId"], name="BLSampleImage_fk1"),
        ForeignKeyConstraint(
            ["containerInspectionId"],
            ["ContainerInspection.containerInspectionId"],
            name="BLSampleImage_fk2",
        ),
        Index("BLSampleImage_fk2", "containerInspectionId"),
        Index("BLSampleImage_fk3", "blSampleImageScoreId"),
        Index("BLSampleImage_idx1", "blSampleId"),
        Index("BLSampleImage_imageFullPath", "imageFullPath", unique=True),
    )

    blSampleImageId: Mapped[int] = mapped_column(int_(11, unsigned=True), primary_key=True)
    blSampleId: Mapped[int] = mapped_column(int_(11, unsigned=True))
    offsetX: Mapped[int] = mapped_column(
        int_(11),
        server_default=text("0"),
        comment="The x offset of the image relative to the canvas",
    )
    offsetY: Mapped[int] = mapped_column(
        int_(11),
        server_default=text("0"),
        comment="The y offset of the image relative to the canvas",
    )
    micronsPerPixelX: Mapped[float | None] = mapped_column(Float())
    micronsPerPixelY: Mapped[float | None] = mapped_column(Float())
    imageFullPath: Mapped[str | None] = mapped_column(String(255))
    blSampleImageScoreId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    comments: Mapped[str | None] = mapped_column(String(255))
    blTimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    containerInspectionId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    modifiedTimeStamp: Mapped[datetime.datetime | None] = mapped_column(DateTime())


class BLSampleImageAutoScoreSchema(Base):
    __tablename__ = "BLSampleImageAutoScoreSchema"
    __table_args__ = ({"comment": "Scoring schema name and whether it is enabled"},)

    blSampleImageAutoScoreSchemaId: Mapped[int] = mapped_column(
        tinyint(3, unsigned=True), primary_key=True
    )
    schemaName: Mapped[str] = mapped_column(
        String(25), comment="Name of the schema e.g. Hampton, MARCO"
    )
    enabled: Mapped[int | None] = mapped_column(
        tinyint(1),
        server_default=text("1"),
        comment="Whether this schema is enabled (could be configurable in the UI)",
    )


class BLSampleImageAutoScoreClass(Base):
    __tablename__ = "BLSampleImageAutoScoreClass"
    __table_args__ = (
        ForeignKeyConstraint(
            ["blSampleImageAutoScoreSchemaId"],
            ["BLSampleImageAutoScoreSchema.blSampleImageAutoScoreSchemaId"],
            name="BLSampleImageAutoScoreClass_fk1",
            onupdate="CASCADE",
        ),
        Index("BLSampleImageAutoScoreClass_fk1", "blSampleImageAutoScoreSchemaId"),
        {"comment": "The automated scoring classes - the thing being scored"},
    )

    blSampleImageAutoScoreClassId: Mapped[int] = mapped_column(
        tinyint(3, unsigned=True), primary_key=True
    )
    scoreClass: Mapped[str] = mapped_column(
        String(15), comment="Thing being scored e.g. crystal, precipitant"
    )
    blSampleImageAutoScoreSchemaId: Mapped[int | None] = mapped_column(tinyint(3, unsigned=True))


class BLSampleImageHasAutoScoreClass(Base):
    __tablename__ = "BLSampleImage_has_AutoScoreClass"
    __table_args__ = (
        ForeignKeyConstraint(
            ["blSampleImageId"],
            ["BLSampleImage.blSampleImageId"],
            name="BLSampleImage_has_AutoScoreClass_fk1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        ForeignKeyConstraint(
            ["blSampleImageAutoScoreClassId"],
            ["BLSampleImageAutoScoreClass.blSampleImageAutoScoreClassId"],
            name="BLSampleImage_has_AutoScoreClass_fk2",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        Index("BLSampleImage_has_AutoScoreClass_fk2", "blSampleImageAutoScoreClassId"),
        {
            "comment": (
                "Many-to-many relationship between drop images and thing being scored, as "
                "well as the actual probability (score) that the drop image contains that thing"
            )
        },
    )

    blSampleImageId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, autoincrement=False
    )
    blSampleImageAutoScoreClassId: Mapped[int] = mapped_column(
        tinyint(3, unsigned=True), primary_key=True, autoincrement=False
    )
    probability: Mapped[float | None] = mapped_column(Float())


class Position(Base):
    __tablename__ = "Position"
    __table_args__ = (
        ForeignKeyConstraint(
            ["relativePositionId"],
            ["Position.positionId"],
            name="Position_relativePositionfk_1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        Index("Position_FKIndex1", "relativePositionId"),
    )

    positionId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, comment="Primary key (auto-incremented)"
    )
    relativePositionId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="relative position, null otherwise"
    )
    posX: Mapped[float | None] = mapped_column(Double())
    posY: Mapped[float | None] = mapped_column(Double())
    posZ: Mapped[float | None] = mapped_column(Double())
    scale: Mapped[float | None] = mapped_column(Double())
    recordTimeStamp: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(), comment="Creation or last update date/time"
    )
    X: Mapped[float | None] = mapped_column(Double(), Computed("posX", persisted=False))
    Y: Mapped[float | None] = mapped_column(Double(), Computed("posY", persisted=False))
    Z: Mapped[float | None] = mapped_column(Double(), Computed("posZ", persisted=False))


class BLSubSample(Base):
    __tablename__ = "BLSubSample"
    __table_args__ = (
        ForeignKeyConstraint(
            ["blSampleImageId"],
            ["BLSampleImage.blSampleImageId"],
            name="BLSubSample_blSampleImagefk_1",
        ),
        ForeignKeyConstraint(
            ["blSampleId"],
            ["BLSample.blSampleId"],
            name="BLSubSample_blSamplefk_1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        ForeignKeyConstraint(
            ["positionId"],
            ["Position.positionId"],
            name="BLSubSample_positionfk_1",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        ForeignKeyConstraint(
            ["position2Id"],
            ["Position.positionId"],
            name="BLSubSample_positionfk_2",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        Index("BLSubSample_FKIndex2", "diffractionPlanId"),
        Index("BLSubSample_FKIndex3", "positionId"),
        Index("BLSubSample_FKIndex4", "motorPositionId"),
        Index("BLSubSample_FKIndex5", "position2Id"),
        Index("BLSubSample_blSampleId_source", "blSampleId", "source"),
        Index("BLSubSample_blSampleImagefk_1", "blSampleImageId"),
    )

    blSubSampleId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, comment="Primary key (auto-incremented)"
    )
    blSampleId: Mapped[int] = mapped_column(int_(10, unsigned=True), comment="sample")
    recordTimeStamp: Mapped[datetime.datetime] = mapped_column(
        TIMESTAMP(),
        server_default=text("CURRENT_TIMESTAMP"),
        comment="Creation or last update date/time",
    )
    diffractionPlanId: Mapped[int | None] = mapped_column(
        int_(10, unsigned=True), comment="eventually diffractionPlan"
    )
    blSampleImageId: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    positionId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="position of the subsample"
    )
    position2Id: Mapped[int | None] = mapped_column(int_(11, unsigned=True))
    motorPositionId: Mapped[int | None] = mapped_column(
        int_(11, unsigned=True), comment="motor position"
    )
    blSubSampleUUID: Mapped[str | None] = mapped_column(
        String(45), comment="uuid of the blsubsample"
    )
    imgFileName: Mapped[str | None] = mapped_column(String(255), comment="image filename")
    imgFilePath: Mapped[str | None] = mapped_column(String(1024), comment="url image")
    comments: Mapped[str | None] = mapped_column(String(1024), comment="comments")
    source: Mapped[str | None] = mapped_column(
        Enum("manual", "auto", native_enum=True, create_constraint=False),
        server_default=text("'manual'"),
    )
    type: Mapped[str | None] = mapped_column(
        String(10), comment="The type of subsample, i.e. roi (region), poi (point), loi (line)"
    )


class BLSamplePosition(Base):
    __tablename__ = "BLSamplePosition"
    __table_args__ = (
        ForeignKeyConstraint(
            ["blSampleId"], ["BLSample.blSampleId"], name="BLSamplePosition_fk_blSampleId"
        ),
        Index("BLSamplePosition_fk_blSampleId", "blSampleId"),
    )

    blSamplePositionId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), primary_key=True, comment="Primary key (auto-incremented)"
    )
    blSampleId: Mapped[int] = mapped_column(
        int_(11, unsigned=True), comment="FK, references parent sample"
    )
    posX: Mapped[float | None] = mapped_column(Double())
    posY: Mapped[float | None] = mapped_column(Double())
    posZ: Mapped[float | None] = mapped_column(Double())
    recordTimeStamp: Mapped[datetime.datetime | None] = mapped_column(
        DateTime(), server_default=text("CURRENT_TIMESTAMP")
    )
    positionType: Mapped[str | None] = mapped_column(
        Enum("dispensing", native_enum=True, create_constraint=False),
        comment="Type of marked position (e.g.: dispensing location)",
    )
