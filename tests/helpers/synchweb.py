"""SynchWeb beside the worker: its reads of a plate, and what staff do there, as SQL.

Written from the facts in contracts.md section 2 (how SynchWeb reads a plate), not from the
worker's own queries, so the tests compare what the worker wrote with what staff would see:

- every query joins Container -> Dewar -> Shipping -> Proposal and BLSample -> Crystal ->
  Protein: a plate without those links is invisible;
- the schemas offered for an inspection are the distinct schemas with scores there;
- auto sub-samples are shown only on each sample's latest BLSampleImage (any inspection);
- the dispense point shown is the sample's 'dispensing' BLSamplePosition with the highest id;
- coordinates are image pixels from the top-left.

Staff actions are the rows SynchWeb writes: queueing a point for data collection (a
ContainerQueue and a ContainerQueueSample), a data collection on a point (a
DataCollectionGroup of the visit and a DataCollection), moving the dispense point (an UPDATE
of the highest-id row in place), adding a dispense point (a newer 'dispensing' row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

# The plate, only if it hangs from a proposal the way registration links it.
VISIBLE_PLATE_SQL = """
SELECT c.containerId, c.barcode, p.proposalCode, p.proposalNumber
FROM Container c
JOIN Dewar d ON d.dewarId = c.dewarId
JOIN Shipping sh ON sh.shippingId = d.shippingId
JOIN Proposal p ON p.proposalId = sh.proposalId
WHERE c.containerId = :containerId
"""

# The plate's samples, only those with a crystal of a protein (of the same proposal).
VISIBLE_SAMPLES_SQL = """
SELECT s.blSampleId, s.location, pr.acronym
FROM BLSample s
JOIN Crystal cr ON cr.crystalId = s.crystalId
JOIN Protein pr ON pr.proteinId = cr.proteinId
JOIN Container c ON c.containerId = s.containerId
JOIN Dewar d ON d.dewarId = c.dewarId
JOIN Shipping sh ON sh.shippingId = d.shippingId
JOIN Proposal p ON p.proposalId = sh.proposalId AND p.proposalId = pr.proposalId
WHERE s.containerId = :containerId
ORDER BY s.blSampleId
"""

# The schemas SynchWeb offers for an inspection: those with scores there.
SCHEMAS_SQL = """
SELECT DISTINCT sch.blSampleImageAutoScoreSchemaId, sch.schemaName
FROM BLSampleImage si
JOIN BLSampleImage_has_AutoScoreClass h ON h.blSampleImageId = si.blSampleImageId
JOIN BLSampleImageAutoScoreClass cls
  ON cls.blSampleImageAutoScoreClassId = h.blSampleImageAutoScoreClassId
JOIN BLSampleImageAutoScoreSchema sch
  ON sch.blSampleImageAutoScoreSchemaId = cls.blSampleImageAutoScoreSchemaId
WHERE si.containerInspectionId = :inspectionId
ORDER BY sch.blSampleImageAutoScoreSchemaId
"""

# Scores per image of an inspection, for the schema picked.
SCORES_SQL = """
SELECT si.blSampleImageId, cls.scoreClass, h.probability
FROM BLSampleImage si
JOIN BLSampleImage_has_AutoScoreClass h ON h.blSampleImageId = si.blSampleImageId
JOIN BLSampleImageAutoScoreClass cls
  ON cls.blSampleImageAutoScoreClassId = h.blSampleImageAutoScoreClassId
WHERE si.containerInspectionId = :inspectionId
  AND cls.blSampleImageAutoScoreSchemaId = :schemaId
"""

# Auto sub-samples, only on each sample's latest image (of any inspection).
AUTO_SUBSAMPLES_SQL = """
SELECT ss.blSubSampleId, ss.blSampleId, ss.blSampleImageId, pos.posX, pos.posY
FROM BLSubSample ss
JOIN Position pos ON pos.positionId = ss.positionId
JOIN BLSample s ON s.blSampleId = ss.blSampleId
WHERE s.containerId = :containerId AND ss.source = 'auto'
  AND ss.blSampleImageId = (SELECT MAX(si.blSampleImageId) FROM BLSampleImage si
                            WHERE si.blSampleId = ss.blSampleId)
ORDER BY ss.blSubSampleId
"""

# The dispense point shown: the sample's 'dispensing' row with the highest id.
DISPENSE_SQL = """
SELECT bp.blSampleId, bp.blSamplePositionId, bp.posX, bp.posY
FROM BLSamplePosition bp
JOIN BLSample s ON s.blSampleId = bp.blSampleId
WHERE s.containerId = :containerId AND bp.positionType = 'dispensing'
  AND bp.blSamplePositionId = (SELECT MAX(b2.blSamplePositionId) FROM BLSamplePosition b2
                               WHERE b2.blSampleId = bp.blSampleId
                                 AND b2.positionType = 'dispensing')
"""

# What is queued for data collection on the plate.
QUEUE_SQL = """
SELECT cqs.blSubSampleId
FROM ContainerQueueSample cqs
JOIN ContainerQueue cq ON cq.containerQueueId = cqs.containerQueueId
WHERE cq.containerId = :containerId AND cq.completedTimeStamp IS NULL
ORDER BY cqs.blSubSampleId
"""


@dataclass(frozen=True)
class PlateView:
    """What staff see of a plate in SynchWeb, as plain values."""

    visible: bool
    samples: tuple[int, ...]  # blSampleIds SynchWeb lists
    schemas: Mapping[int, tuple[str, ...]]  # inspection id -> schema names offered
    scores: Mapping[tuple[int, str], Mapping[str, float]]  # (image id, schema) -> class -> p
    subsamples: Mapping[int, tuple[tuple[int, float, float], ...]]  # sample -> (id, x, y)
    dispense: Mapping[int, tuple[int, float, float]]  # sample -> (row id, x, y)
    queued: tuple[int, ...]


def _rows(session: Session, sql: str, **params: Any) -> list[Mapping[str, Any]]:
    return list(session.execute(text(sql), params).mappings().all())


def plate_view(
    factory: sessionmaker[Session], container_id: int, inspection_ids: tuple[int, ...]
) -> PlateView:
    """Run SynchWeb's reads of one plate."""
    with factory() as session:
        visible = bool(_rows(session, VISIBLE_PLATE_SQL, containerId=container_id))
        samples = tuple(
            int(r["blSampleId"])
            for r in _rows(session, VISIBLE_SAMPLES_SQL, containerId=container_id)
        )
        schemas: dict[int, tuple[str, ...]] = {}
        scores: dict[tuple[int, str], dict[str, float]] = {}
        for inspection_id in inspection_ids:
            offered = _rows(session, SCHEMAS_SQL, inspectionId=inspection_id)
            schemas[inspection_id] = tuple(r["schemaName"] for r in offered)
            for schema in offered:
                for row in _rows(
                    session,
                    SCORES_SQL,
                    inspectionId=inspection_id,
                    schemaId=schema["blSampleImageAutoScoreSchemaId"],
                ):
                    key = (int(row["blSampleImageId"]), schema["schemaName"])
                    scores.setdefault(key, {})[row["scoreClass"]] = float(row["probability"])
        subsamples: dict[int, list[tuple[int, float, float]]] = {}
        for row in _rows(session, AUTO_SUBSAMPLES_SQL, containerId=container_id):
            subsamples.setdefault(int(row["blSampleId"]), []).append(
                (int(row["blSubSampleId"]), float(row["posX"]), float(row["posY"]))
            )
        queued = tuple(
            int(r["blSubSampleId"]) for r in _rows(session, QUEUE_SQL, containerId=container_id)
        )
    dispense = shown_dispense(factory, container_id)
    return PlateView(
        visible,
        samples,
        schemas,
        scores,
        {sample: tuple(points) for sample, points in subsamples.items()},
        dispense,
        queued,
    )


def shown_dispense(
    factory: sessionmaker[Session], container_id: int
) -> dict[int, tuple[int, float, float]]:
    """Sample -> (row id, x, y) of the dispense point shown; needs only the core tables."""
    with factory() as session:
        return {
            int(r["blSampleId"]): (int(r["blSamplePositionId"]), float(r["posX"]), float(r["posY"]))
            for r in _rows(session, DISPENSE_SQL, containerId=container_id)
        }


# --- what staff do in SynchWeb ------------------------------------------------------------


def queue_point(factory: sessionmaker[Session], container_id: int, subsample_id: int) -> int:
    """Queue an auto point for data collection; returns the ContainerQueueSample id."""
    with factory.begin() as session:
        queue = session.execute(
            text("INSERT INTO ContainerQueue (containerId) VALUES (:containerId)"),
            {"containerId": container_id},
        ).lastrowid
        return int(
            session.execute(
                text(
                    "INSERT INTO ContainerQueueSample (containerQueueId, blSubSampleId, blSampleId)"
                    " SELECT :queueId, blSubSampleId, blSampleId FROM BLSubSample"
                    " WHERE blSubSampleId = :subsampleId"
                ),
                {"queueId": queue, "subsampleId": subsample_id},
            ).lastrowid
        )


def collect_on(factory: sessionmaker[Session], subsample_id: int) -> int:
    """A data collection on a point, in the plate's visit; returns the DataCollection id."""
    with factory.begin() as session:
        sample_id, session_id = session.execute(
            text(
                "SELECT ss.blSampleId, c.sessionId FROM BLSubSample ss"
                " JOIN BLSample s ON s.blSampleId = ss.blSampleId"
                " JOIN Container c ON c.containerId = s.containerId"
                " WHERE ss.blSubSampleId = :id"
            ),
            {"id": subsample_id},
        ).one()
        group = session.execute(
            text(
                "INSERT INTO DataCollectionGroup (sessionId, blSampleId, experimentType)"
                " VALUES (:sessionId, :sampleId, 'SAD')"
            ),
            {"sessionId": session_id, "sampleId": sample_id},
        ).lastrowid
        return int(
            session.execute(
                text(
                    "INSERT INTO DataCollection (dataCollectionGroupId, blSubSampleId)"
                    " VALUES (:groupId, :subsampleId)"
                ),
                {"groupId": group, "subsampleId": subsample_id},
            ).lastrowid
        )


def move_dispense_point(factory: sessionmaker[Session], sample_id: int, x: float, y: float) -> int:
    """SynchWeb's edit: UPDATE the sample's highest-id dispensing row in place; its id."""
    with factory.begin() as session:
        row_id = session.execute(
            text(
                "SELECT MAX(blSamplePositionId) FROM BLSamplePosition"
                " WHERE blSampleId = :sampleId AND positionType = 'dispensing'"
            ),
            {"sampleId": sample_id},
        ).scalar_one()
        session.execute(
            text("UPDATE BLSamplePosition SET posX = :x, posY = :y WHERE blSamplePositionId = :id"),
            {"x": x, "y": y, "id": row_id},
        )
        return int(row_id)


def add_dispense_point(factory: sessionmaker[Session], sample_id: int, x: float, y: float) -> int:
    """A newer 'dispensing' row added by hand; returns its id."""
    with factory.begin() as session:
        return int(
            session.execute(
                text(
                    "INSERT INTO BLSamplePosition (blSampleId, posX, posY, positionType)"
                    " VALUES (:sampleId, :x, :y, 'dispensing')"
                ),
                {"sampleId": sample_id, "x": x, "y": y},
            ).lastrowid
        )
