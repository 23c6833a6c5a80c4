"""A plate whose drops' time courses are known exactly, for the hits tests.

Three Completed inspections a day apart (2024-03-01, 02, 03) of four drops (A1.1, A1.2, A2.1,
A2.2) with hand-made results through the real writer; every crystal is 300 px at 2 um/px
(1200 um^2) with score 0.9. Under the default combined rule: A1.1 first hit at inspection 2,
A1.2 at 1 (a miss at 2), A2.1 never (the detector alone), A2.2 at 3 (its second image failed).
"""

from __future__ import annotations

from pathlib import Path

from helpers.staff import SeededPlate, analysis, fail_image, seed_plate, write_result
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.hits import HitPolicy
from chimp_worker.ispyb.progress import try_complete_inspection
from chimp_worker.ispyb.time_course import TimeCourseUpdate, refresh_time_course

# (inspection index, location) -> (P(crystal), crystal targets)
RESULTS: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {
    (0, 1): (0.2, []),  # combined 0.1 + 0: no
    (1, 1): (0.6, [(300, 300)]),  # (0.6 + 0.9) / 2 = 0.75: first hit
    (2, 1): (0.95, [(300, 300), (500, 500), (700, 300)]),
    (0, 2): (0.95, []),  # a sure classifier: first hit at once
    (1, 2): (0.3, []),  # 0.15: not a hit now
    (2, 2): (0.96, [(400, 400)]),
    (0, 3): (0.1, [(350, 350)]),  # (0.1 + 0.9) / 2 = 0.5: the detector alone is not enough
    (1, 3): (0.1, [(350, 350)]),
    (2, 3): (0.1, [(350, 350)]),
    (0, 4): (0.05, []),
    (2, 4): (0.7, [(600, 600)]),  # 0.8: first hit at the third inspection
}
FAILED = {(1, 4): "image_corrupt"}


def seed_hit_plate(
    factory: sessionmaker[Session],
    image_root: Path,
    *,
    barcode: str = "HITS-001",
    write_images: bool = False,
) -> SeededPlate:
    """The plate with its results written; no inspection completed yet."""
    plate = seed_plate(
        factory, image_root, barcode=barcode, inspections=3, write_images=write_images
    )
    for (index, location), (p_crystal, targets) in RESULTS.items():
        write_result(factory, plate.image_ids[(index, location)], analysis(p_crystal, targets))
    for (index, location), reason in FAILED.items():
        fail_image(factory, plate.image_ids[(index, location)], reason)
    return plate


def complete(
    factory: sessionmaker[Session], inspection_id: int, policy: HitPolicy | None = None
) -> TimeCourseUpdate:
    """Complete the inspection as a worker does, then update the time course."""
    assert try_complete_inspection(factory, inspection_id)
    return refresh_time_course(factory, inspection_id, policy or HitPolicy())
