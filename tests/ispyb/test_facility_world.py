"""The facility world the tests run on is what a facility has: the full schema with the keys
into BLSubSample as the real schema declares them, only the facility's lookups, and from
``db upgrade`` only the worker's own tables."""

from __future__ import annotations

from ispyb.sqlalchemy import Base as FacilityBase
from sqlalchemy import inspect, text

from chimp_worker.ispyb import schema
from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.references import SUBSAMPLE_REFERENCES
from chimp_worker.ispyb.worker_tables import WorkerBase


def test_the_facility_world_has_the_full_schema_and_the_keys_into_blsubsample(
    bare_facility_url: str,
) -> None:
    engine = make_engine(bare_facility_url)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            rules = dict(
                connection.execute(
                    text(
                        "SELECT TABLE_NAME, DELETE_RULE FROM information_schema."
                        "REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
                        " AND REFERENCED_TABLE_NAME = 'BLSubSample'"
                    )
                ).all()
            )
            schemas = connection.execute(
                text(
                    "SELECT blSampleImageAutoScoreSchemaId, schemaName FROM "
                    "BLSampleImageAutoScoreSchema ORDER BY 1"
                )
            ).all()
            classes = connection.execute(
                text("SELECT COUNT(*) FROM BLSampleImageAutoScoreClass")
            ).scalar()
            pipeline = connection.execute(
                text("SELECT name FROM ProcessingPipeline WHERE processingPipelineId = 6")
            ).scalar()
            kind, revisions, heads = schema.current(bare_facility_url)
    finally:
        engine.dispose()
    assert len(FacilityBase.metadata.tables) > 200
    assert set(FacilityBase.metadata.tables) | set(WorkerBase.metadata.tables) <= names
    assert "chimp_core_alembic_version" not in names  # db upgrade made no core tables
    assert (kind, revisions["core"], revisions["worker"]) == ("ispyb", None, heads["worker"])
    assert rules == {
        "ContainerQueueSample": "CASCADE",
        "DataCollection": "RESTRICT",
        "BLSampleImageMeasurement": "RESTRICT",
        "EnergyScan": "RESTRICT",
        "XFEFluorescenceSpectrum": "RESTRICT",
        "BLSubSample_has_Positioner": "RESTRICT",
    }
    assert set(rules) | {"BLSample"} == {reference.table for reference in SUBSAMPLE_REFERENCES}
    assert schemas == [(1, "MARCO"), (2, "CHIMP")]
    assert (classes, pipeline) == (8, "xia2/DIALS")
