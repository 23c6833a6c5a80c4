"""Plates with known results, written through DATA's real writer, for the staff views' tests.

Independent of the mock imager: the ISPyB rows are inserted directly and the results are
hand-made ``ImageAnalysis`` objects with exact probabilities, targets and dispense points, so
tests can assert the values the staff commands print.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helpers.ispyb_rows import CLASSIFIER, DETECTOR  # the data layer tests' model refs
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.analysis import (
    CHIMP_SCHEMA,
    CrystalTarget,
    Detection,
    DispensePoint,
    DispenseStatus,
    ImageAnalysis,
    ModelRef,
)
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.writer import record_image_failure, write_image_result
from chimp_worker.mock_imager.registration import register_plate

IMAGE_SIZE = (1224, 1024)  # width, height of the test JPEGs (XChem imager size)


@dataclass
class SeededPlate:
    containerId: int
    barcode: str
    sample_ids: dict[int, int]  # location -> blSampleId
    inspection_ids: list[int]
    image_ids: dict[tuple[int, int], int]  # (inspection index, location) -> blSampleImageId
    image_paths: dict[int, Path] = field(default_factory=dict)


def seed_plate(
    session_factory: sessionmaker[Session],
    image_root: Path,
    *,
    barcode: str = "STAFF-001",
    locations: Sequence[int] = (1, 2, 3, 4),
    inspections: int = 2,
    container_type_id: int = 14,
    write_images: bool = True,
) -> SeededPlate:
    """A plate with a visit (mx1234-5), one sample per location and Completed inspections."""
    base = dt.datetime(2024, 3, 1, 9, 0, 0)
    with session_factory() as session, session.begin():
        # As registered (on a facility's schema: person, shipment, dewar, protein, crystal).
        registration = register_plate(session, "mx1234-5", barcode)
        container = t.Container(
            barcode=barcode,
            containerType="CrystalQuickX",
            containerTypeId=container_type_id,
            sessionId=registration.sessionId,
            dewarId=registration.dewarId,
        )
        session.add(container)
        session.flush()
        samples = {}
        for location in locations:
            sample = t.BLSample(
                containerId=container.containerId,
                crystalId=registration.crystalId,
                location=str(location),
                name=f"d{location}",
            )
            session.add(sample)
            session.flush()
            samples[location] = sample.blSampleId
        inspection_ids: list[int] = []
        image_ids: dict[tuple[int, int], int] = {}
        paths: dict[int, Path] = {}
        for index in range(inspections):
            when = base + dt.timedelta(days=index)
            inspection = t.ContainerInspection(
                containerId=container.containerId,
                inspectionTypeId=1,
                state="Completed",
                blTimeStamp=when,
                completedTimeStamp=when + dt.timedelta(minutes=20),
            )
            session.add(inspection)
            session.flush()
            inspection_ids.append(inspection.containerInspectionId)
            for location, sample_id in samples.items():
                path = (
                    image_root
                    / f"{container.containerId}/{inspection.containerInspectionId}/{location}.jpg"
                )
                image = t.BLSampleImage(
                    blSampleId=sample_id,
                    containerInspectionId=inspection.containerInspectionId,
                    imageFullPath=str(path),
                    micronsPerPixelX=2.0,
                    micronsPerPixelY=2.0,
                    blTimeStamp=when,
                )
                session.add(image)
                session.flush()
                image_ids[(index, location)] = image.blSampleImageId
                paths[image.blSampleImageId] = path
        container_id = container.containerId
    if write_images:
        for image_id, path in paths.items():
            write_test_jpeg(path, seed=image_id)
    return SeededPlate(container_id, barcode, samples, inspection_ids, image_ids, paths)


def write_test_jpeg(path: Path, *, seed: int) -> None:
    """A small grey drop on black, deterministic by seed."""
    width, height = IMAGE_SIZE
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - 612) / 400.0) ** 2 + ((yy - 512) / 350.0) ** 2 <= 1.0
    pixels[inside] = 110 + rng.integers(0, 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=85)


def analysis(
    p_crystal: float,
    targets: Sequence[tuple[int, int]] = (),
    dispense: tuple[int, int] | None = (600, 500),
    *,
    models: Sequence[ModelRef] = (CLASSIFIER, DETECTOR),
    schema: str = CHIMP_SCHEMA,
    analyser: str = "chimp",
) -> ImageAnalysis:
    """A result with exact values: P(crystal), the rest split between clear and precipitate."""
    rest = 1.0 - p_crystal
    probabilities: Mapping[str, float] = {
        "crystals": p_crystal,
        "clear": round(rest * 0.75, 6),
        "precipitate": round(rest * 0.25, 6),
        "other": 0.0,
    }
    detections = [Detection("drop", 0.99, (212.0, 162.0, 1012.0, 862.0), None, 440_000, (612, 512))]
    crystal_targets = []
    for x, y in targets:
        crystal_targets.append(CrystalTarget(x, y, 0.9, len(detections)))
        detections.append(
            Detection("crystal", 0.9, (x - 10.0, y - 8.0, x + 10.0, y + 8.0), None, 300, (x, y))
        )
    point = (
        DispensePoint(DispenseStatus.OK, dispense[0], dispense[1], 120.0, 1)
        if dispense is not None
        else DispensePoint(DispenseStatus.NO_DROP, drops_seen=0)
    )
    width, height = IMAGE_SIZE
    return ImageAnalysis(
        analyser=analyser,
        schema_name=schema,
        models=tuple(models),
        width=width,
        height=height,
        probabilities=probabilities,
        detections=tuple(detections),
        crystal_targets=tuple(crystal_targets),
        dispense=point,
        timings_ms={"model": 12.5},
    )


def write_result(
    session_factory: sessionmaker[Session], image_id: int, result: ImageAnalysis
) -> None:
    write_image_result(session_factory, image_id, result)


def fail_image(session_factory: sessionmaker[Session], image_id: int, reason: str) -> None:
    record_image_failure(session_factory, image_id, reason, f"test: {reason}", "chimp")


# What the known plate holds: (inspection index, location) -> (P(crystal), targets, dispense).
KNOWN: dict[tuple[int, int], tuple[float, list[tuple[int, int]], tuple[int, int] | None]] = {
    (0, 1): (0.9, [(300, 400), (500, 450)], (600, 500)),
    (0, 2): (0.1, [], (610, 520)),
    (1, 1): (0.95, [(310, 405), (505, 455), (700, 300)], (620, 480)),
    (1, 2): (0.2, [], (615, 525)),
    (1, 3): (0.5, [(400, 400)], None),
    (1, 4): (0.05, [], (630, 470)),
}
FAILED = {(0, 3): "image_corrupt"}  # (0, 4) stays pending: never processed


@dataclass
class KnownPlate:
    url: str
    session_factory: sessionmaker[Session]
    plate: SeededPlate
    image_root: Path


def build_known_plate(url: str, image_root: Path) -> Iterator[KnownPlate]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    plate = seed_plate(factory, image_root, barcode="STAFF-001", locations=(1, 2, 3, 4))
    for (index, location), (p_crystal, targets, dispense) in KNOWN.items():
        write_result(
            factory, plate.image_ids[(index, location)], analysis(p_crystal, targets, dispense)
        )
    for (index, location), reason in FAILED.items():
        fail_image(factory, plate.image_ids[(index, location)], reason)
    # A manual sub-sample on the latest image of drop 1: never listed as an auto target.
    with factory() as session, session.begin():
        position = t.Position(posX=11.0, posY=22.0)
        session.add(position)
        session.flush()
        session.add(
            t.BLSubSample(
                blSampleId=plate.sample_ids[1],
                blSampleImageId=plate.image_ids[(1, 1)],
                positionId=position.positionId,
                source="manual",
                type="poi",
            )
        )
    try:
        yield KnownPlate(url, factory, plate, image_root)
    finally:
        engine.dispose()


@contextmanager
def scratch_mariadb() -> Iterator[str]:
    """A fresh MariaDB database for a module of read-only tests (the same server and
    credentials as ``conftest.mariadb_url``), dropped afterwards; fails when none is running."""
    import MySQLdb
    import pytest

    host = os.environ.get("CHIMP_TEST_MARIADB_HOST", "127.0.0.1")
    port = int(os.environ.get("CHIMP_TEST_MARIADB_PORT", "3306"))
    user = os.environ.get("CHIMP_TEST_MARIADB_USER", "root")
    password = os.environ.get("CHIMP_TEST_MARIADB_PASSWORD", "")
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"MariaDB is not reachable at {host}:{port} ({exc})", pytrace=False)
    name = f"chimp_test_{uuid.uuid4().hex[:12]}"
    admin = MySQLdb.connect(host=host, port=port, user=user, passwd=password)
    try:
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        secret = f":{password}" if password else ""
        yield f"mysql+mysqldb://{user}{secret}@{host}:{port}/{name}?charset=utf8mb4"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
