"""Creating and upgrading the database schema.

``create_all`` is the fast path for tests: the same tables and seed rows as a full upgrade.
"""

from __future__ import annotations

from chimp_worker.ispyb.database import make_engine
from chimp_worker.ispyb.seed import seed_core
from chimp_worker.ispyb.tables import Base
from chimp_worker.ispyb.worker_tables import WorkerBase


def create_all(url: str) -> None:
    """Create the ISPyB core subset and the worker's tables, and seed the lookup rows."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            WorkerBase.metadata.create_all(connection)
            seed_core(connection)
    finally:
        engine.dispose()
