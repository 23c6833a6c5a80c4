"""The mock imager as a process: a plate in the configured database, events on the broker.

``run_mock_imager`` is what ``chimp-worker mock-imager`` calls: it creates a plate with
``create_plate`` in the configured database and, given a broker, publishes one
``InspectionCompleted`` event per inspection as each is marked Completed (publisher confirms,
``mandatory``), waiting ``interval_s`` between inspections of a schedule the way a real
imager's schedule spaces them (in seconds here instead of days).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect

from chimp_worker.errors import DatabaseSchemaError
from chimp_worker.ispyb.database import (
    DatabaseOptions,
    engine_for,
    make_session_factory,
    translate_db_errors,
)
from chimp_worker.log import get_logger
from chimp_worker.mock_imager.plate import MockInspection, MockPlate, create_plate

if TYPE_CHECKING:
    from chimp_worker.broker import BrokerOptions

log = get_logger(__name__)


@dataclass(frozen=True)
class PlateRequest:
    """What plate to image; mirrors the ``mock-imager`` options."""

    barcode: str
    image_root: Path
    flavour: str = "vmxi"
    container_type: str = "CrystalQuickX"
    wells: int | None = None
    seed: int = 0
    inspections: int = 1
    image_size: tuple[int, int] | None = None
    faults: Mapping[int, str] = field(default_factory=dict)
    visit: str = "mx23456-1"


def run_mock_imager(
    database: DatabaseOptions,
    request: PlateRequest,
    *,
    broker: BrokerOptions | None = None,
    interval_s: float = 0.0,
    on_inspection: Callable[[MockInspection, str | None], None] | None = None,
) -> MockPlate:
    """Create and image the plate; returns it. With ``broker``, each completed inspection's
    event is published there. ``on_inspection(inspection, message_id)`` reports each completed
    inspection (message id None when not published)."""
    engine = engine_for(database)
    try:
        require_core_tables(engine)
        with ExitStack() as stack:
            publisher = None
            if broker is not None:
                from chimp_worker.broker import Publisher

                publisher = stack.enter_context(
                    Publisher(broker, connection_name=f"chimp-worker mock-imager {request.barcode}")
                )

            def completed(inspection: MockInspection) -> None:
                message_id = None
                if publisher is not None:
                    from chimp_worker.events import InspectionCompleted

                    event = InspectionCompleted(
                        containerInspectionId=inspection.containerInspectionId,
                        barcode=request.barcode,
                    )
                    message_id = publisher.publish(event)
                    log.info(
                        "inspection_event_published",
                        inspection_id=inspection.containerInspectionId,
                        message_id=message_id,
                    )
                if on_inspection is not None:
                    on_inspection(inspection, message_id)
                if interval_s > 0 and inspection.index + 1 < request.inspections:
                    time.sleep(interval_s)

            return create_plate(
                make_session_factory(engine),
                request.image_root,
                barcode=request.barcode,
                flavour=request.flavour,
                container_type=request.container_type,
                wells=request.wells,
                seed=request.seed,
                inspections=request.inspections,
                faults=request.faults or None,
                image_size=request.image_size,
                visit=request.visit,
                on_completed=completed,
            )
    finally:
        engine.dispose()


def require_core_tables(engine: Engine) -> None:
    """A clear error instead of "no such table" when the database has no ISPyB schema."""
    with translate_db_errors():
        tables = set(inspect(engine).get_table_names())
    missing = {"Container", "BLSample", "ContainerInspection", "BLSampleImage"} - tables
    if missing:
        raise DatabaseSchemaError(
            f"the database has no ISPyB core tables ({', '.join(sorted(missing))} missing): "
            "run `chimp-worker db upgrade --target all` first"
        )
