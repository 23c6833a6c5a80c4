"""Mock-imager plates for tests of the queue, replay, report and demo.

    plate = small_plate(ispyb_sqlite_url, tmp_path / "images", barcode="CQX-1", wells=2)
    settings = plate_settings(ispyb_sqlite_url, tmp_path / "images")
    make_pipeline(settings).process(plate.latest.containerInspectionId)

Images are rendered small (a tenth of VMXi's width, a fifth of XChem's) so a plate costs
milliseconds; ``plate.truth(image_id)`` is each image's exact ground truth and
``image.expected_failure`` the reason the worker must record for an injected fault.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chimp_worker.config import Settings, load_settings
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.mock_imager.http_server import ImageServer, ServerFaults
from chimp_worker.mock_imager.plate import MockPlate, create_plate

# Test render sizes: the imagers' aspect ratios at a fraction of their size.
SMALL_SIZES: Mapping[str, tuple[int, int]] = {"vmxi": (253, 203), "xchem": (245, 205)}


def small_plate(
    database_url: str,
    image_root: Path,
    *,
    barcode: str = "MOCK-0001",
    flavour: str = "vmxi",
    wells: int = 2,
    **options: Any,
) -> MockPlate:
    """A plate of ``wells`` wells (CrystalQuickX: 2 drops each) in a database with the schema.

    Other ``create_plate`` options pass through (``inspections``, ``faults``, ``outcomes``,
    ``seed``, ``container_type``, ``image_size``...).
    """
    engine = make_engine(database_url)
    try:
        options.setdefault("image_size", SMALL_SIZES[flavour])
        return create_plate(
            make_session_factory(engine),
            image_root,
            barcode=barcode,
            flavour=flavour,
            wells=wells,
            **options,
        )
    finally:
        engine.dispose()


def plate_settings(database_url: str, image_root: Path, **overrides: Any) -> Settings:
    """Settings that read the plate's images from disk: baseline analyser (writing its targets
    and dispense points into ISPyB's tables, off by default in production), small batches."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "image_roots": [Path(image_root).resolve()],
        "analyser": "baseline",
        "baseline_writes_targets": True,  # a test database: let the baseline's targets show
        "batch_size": 2,
    }
    values.update(overrides)
    return load_settings(**values)


@contextmanager
def served_plate_settings(
    database_url: str,
    image_root: Path,
    faults: ServerFaults | None = None,
    **overrides: Any,
) -> Iterator[tuple[Settings, ImageServer]]:
    """Settings that fetch the plate's images over HTTP from a loopback server of the root."""
    with ImageServer(image_root, faults=faults) as server:
        values: dict[str, Any] = {
            "image_url_template": server.url_template,
            "image_timeout_s": 5.0,
            "image_fetch_retries": 1,
        }
        values.update(overrides)
        yield plate_settings(database_url, image_root, **values), server
