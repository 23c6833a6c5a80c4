"""A mock plate imager: ISPyB rows and JPEGs laid out the way a facility's imager writes them.

``create_plate`` does what a plate registration, a Formulatrix imager and its ISPyB bridge do
for a new plate: the visit (an existing one is attached to) and, on a facility's full schema,
the shipment, dewar and crystal SynchWeb joins through (``registration.py``); a Container
(barcode, ContainerType, dewar) in the visit, one BLSample per drop with its location and
crystal, then
for each scheduled inspection a ContainerInspection, one BLSampleImage per drop whose JPEG and
``{id}th.jpg`` thumbnail it writes at

    {visit dir}/imaging/{containerId}/{containerInspectionId}/{blSampleImageId}.jpg

and finally marks the inspection Completed -- the moment a worker's event is due. Drops keep
their scene across inspections, so crystals appear and grow along the schedule. Faults can
be injected per drop location to check that bad images end as recorded failures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import transaction
from chimp_worker.log import get_logger
from chimp_worker.mock_imager.faults import FILE_FAULTS, damage
from chimp_worker.mock_imager.registration import parse_visit, register_plate
from chimp_worker.mock_imager.scene import (
    Scene,
    get_flavour,
    nucleation_onset,
    random_scene,
    with_nucleation_onset,
)
from chimp_worker.mock_imager.synthetic import (
    GroundTruth,
    encode_jpeg,
    encode_thumbnail,
    render_scene,
)
from chimp_worker.plate_layout import MOCK_DEFAULT_DROPS_X, PlateLayout

log = get_logger(__name__)

# Hours after set-up at which a plate is imaged: the Fibonacci-like schedules imagers use.
SCHEDULE_HOURS: tuple[float, ...] = (0, 12, 24, 48, 72, 120, 192, 312, 504, 816)
VISIBLE_INSPECTION_TYPE = 1


@dataclass(frozen=True)
class MockImage:
    """One drop image of one inspection, with what it really shows."""

    blSampleImageId: int
    blSampleId: int
    containerInspectionId: int
    location: int  # BLSample.location, 1-based
    well: str  # "A1"
    drop: int  # 1-based drop within the well
    imageFullPath: str
    thumbnail_path: str
    truth: GroundTruth
    fault: str | None = None  # the injected file fault, if any

    @property
    def expected_failure(self) -> str | None:
        """The failure reason the worker should record for this image (None: a good image)."""
        return FILE_FAULTS[self.fault] if self.fault else None


@dataclass(frozen=True)
class MockInspection:
    containerInspectionId: int
    index: int  # 0-based position in the schedule
    time: float  # growth time 0..1 the drops were rendered at
    scheduledTimeStamp: dt.datetime
    completedTimeStamp: dt.datetime
    images: tuple[MockImage, ...]

    @property
    def blSampleImageIds(self) -> tuple[int, ...]:
        return tuple(image.blSampleImageId for image in self.images)


@dataclass(frozen=True)
class MockPlate:
    """What ``create_plate`` made: every id, every path and the ground truth of every image."""

    containerId: int
    barcode: str
    flavour: str
    container_type: str
    visit: str
    visit_dir: Path
    microns_per_pixel: float
    blSampleIds: tuple[int, ...]  # in location order
    inspections: tuple[MockInspection, ...]

    @property
    def containerInspectionIds(self) -> tuple[int, ...]:
        return tuple(inspection.containerInspectionId for inspection in self.inspections)

    @property
    def latest(self) -> MockInspection:
        return self.inspections[-1]

    @property
    def images(self) -> tuple[MockImage, ...]:
        return tuple(image for inspection in self.inspections for image in inspection.images)

    @property
    def blSampleImageIds(self) -> tuple[int, ...]:
        return tuple(image.blSampleImageId for image in self.images)

    def image(self, blsample_image_id: int) -> MockImage:
        for image in self.images:
            if image.blSampleImageId == blsample_image_id:
                return image
        raise KeyError(f"BLSampleImage {blsample_image_id} is not part of plate {self.barcode}")

    def truth(self, blsample_image_id: int) -> GroundTruth:
        return self.image(blsample_image_id).truth

    def first_crystal_inspection(self, location: int) -> int | None:
        """The inspection (1-based, time order) whose image of the drop first shows a crystal,
        by the ground truth; None when it never does within the schedule."""
        for inspection in self.inspections:
            for image in inspection.images:
                if image.location == location and image.truth.crystals:
                    return inspection.index + 1
        return None

    @property
    def locations(self) -> tuple[int, ...]:
        return tuple(image.location for image in self.inspections[0].images)


@dataclass(frozen=True)
class _Layout:
    """A ContainerType row as the mock imager creates a plate of it: the shared geometry, its
    id and name, and how many wells its capacity holds (exactly, not rounded up to rows)."""

    container_type_id: int
    name: str
    geometry: PlateLayout
    wells: int

    @property
    def drops_per_well(self) -> int:
        return self.geometry.drops_per_well

    def well_name(self, well_index: int) -> str:
        return self.geometry.well_name(well_index)


def create_plate(
    session_factory: sessionmaker[Session],
    image_root: Path,
    *,
    barcode: str,
    flavour: str = "vmxi",
    container_type: str = "CrystalQuickX",
    wells: int | None = None,
    seed: int = 0,
    inspections: int = 1,
    faults: Mapping[int, str] | None = None,
    fault_inspections: Collection[int] | None = None,
    outcomes: Mapping[int, str] | None = None,
    onsets: Mapping[int, float] | None = None,
    image_size: tuple[int, int] | None = None,
    visit: str = "mx23456-1",
    start: dt.datetime | None = None,
    on_completed: Callable[[MockInspection], None] | None = None,
    on_image: Callable[[MockImage], None] | None = None,
) -> MockPlate:
    """Create a plate, image it ``inspections`` times, return every id and ground truth.

    ``wells``: image only the first N wells (row-major from A1); None for the whole plate.
    ``faults``: drop location -> file fault (``faults.FILE_FAULTS``), applied in the
    inspections listed in ``fault_inspections`` (0-based; default all). ``outcomes``: drop
    location -> outcome class, to fix what a drop shows (default: drawn by seed). ``onsets``:
    location -> when (0..1 of the schedule) its crystals start to nucleate (default: drawn by
    seed, ``scene.nucleation_onset``); with one inspection (time 1) it changes nothing.
    ``image_size`` (width, height) renders smaller than the imager's native size.
    ``on_completed`` runs after each inspection is marked Completed (to publish its event),
    ``on_image`` after each image file is written (for progress bars).
    """
    spec = get_flavour(flavour)
    width, height = image_size if image_size is not None else (spec.width, spec.height)
    # ISPyB keeps this in a single-precision FLOAT: round to what it can hold.
    microns_per_pixel = round(spec.microns_per_pixel * spec.width / width, 4)
    if inspections < 1:
        raise ValueError("inspections must be at least 1")
    for location, fault in (faults or {}).items():
        if fault not in FILE_FAULTS:
            raise ValueError(
                f"fault {fault!r} at location {location}: expected one of {sorted(FILE_FAULTS)}"
            )
    parse_visit(visit)  # a bad visit fails before anything is written
    image_root = Path(image_root).resolve()
    visit_dir = image_root / visit
    hours = _schedule_hours(inspections)
    start = start or (dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=hours[-1]))

    with transaction(session_factory) as session:
        layout = _layout(session, container_type)
        well_count = layout.wells if wells is None else wells
        if not 1 <= well_count <= layout.wells:
            raise ValueError(f"wells must be within 1..{layout.wells} for {layout.name}")
        if session.scalar(select(t.Container.containerId).where(t.Container.barcode == barcode)):
            raise ValueError(f"a container with barcode {barcode!r} already exists")
        registration = register_plate(session, visit, barcode)
        imager_id = _imager(session, flavour)
        container = t.Container(
            dewarId=registration.dewarId,
            barcode=barcode,
            code=barcode,
            containerType=layout.name,
            containerTypeId=layout.container_type_id,
            capacity=layout.wells * layout.drops_per_well,
            containerStatus="in_imager",
            imagerId=imager_id,
            sessionId=registration.sessionId,
            bltimeStamp=start,
        )
        session.add(container)
        session.flush()
        samples: list[tuple[int, int, str, int]] = []  # (blSampleId, location, well, drop)
        for well_index in range(well_count):
            for drop_index in range(layout.drops_per_well):
                location = well_index * layout.drops_per_well + drop_index + 1
                well = layout.well_name(well_index)
                sample = t.BLSample(
                    containerId=container.containerId,
                    crystalId=registration.crystalId,
                    name=f"{well}_{drop_index + 1}",
                    location=str(location),
                )
                session.add(sample)
                session.flush()
                samples.append((sample.blSampleId, location, well, drop_index + 1))
        container_id = container.containerId

    scenes = {
        location: with_nucleation_onset(
            random_scene(_drop_seed(seed, location), width, height, (outcomes or {}).get(location)),
            (onsets or {}).get(location, nucleation_onset(_drop_seed(seed, location))),
        )
        for _sample_id, location, _well, _drop in samples
    }
    done: list[MockInspection] = []
    for index, offset in enumerate(hours):
        faulty = fault_inspections is None or index in fault_inspections
        inspection = _inspect(
            session_factory,
            container_id=container_id,
            imager_id=imager_id,
            samples=samples,
            scenes=scenes,
            flavour=flavour,
            seed=seed,
            index=index,
            time=offset / hours[-1] if hours[-1] else 1.0,
            scheduled=start + dt.timedelta(hours=offset),
            faults=(faults or {}) if faulty else {},
            visit_dir=visit_dir,
            microns_per_pixel=microns_per_pixel,
            on_image=on_image,
        )
        done.append(inspection)
        log.info(
            "mock_inspection_completed",
            barcode=barcode,
            container_id=container_id,
            inspection_id=inspection.containerInspectionId,
            images=len(inspection.images),
        )
        if on_completed is not None:
            on_completed(inspection)
    return MockPlate(
        containerId=container_id,
        barcode=barcode,
        flavour=flavour,
        container_type=layout.name,
        visit=visit,
        visit_dir=visit_dir,
        microns_per_pixel=microns_per_pixel,
        blSampleIds=tuple(sample[0] for sample in samples),
        inspections=tuple(done),
    )


def _inspect(
    session_factory: sessionmaker[Session],
    *,
    container_id: int,
    imager_id: int,
    samples: list[tuple[int, int, str, int]],
    scenes: Mapping[int, Scene],
    flavour: str,
    seed: int,
    index: int,
    time: float,
    scheduled: dt.datetime,
    faults: Mapping[int, str],
    visit_dir: Path,
    microns_per_pixel: float,
    on_image: Callable[[MockImage], None] | None,
) -> MockInspection:
    """One imaging run: rows (state 'Imaging'), then the files, then 'Completed'."""
    with transaction(session_factory) as session:
        inspection = t.ContainerInspection(
            containerId=container_id,
            inspectionTypeId=VISIBLE_INSPECTION_TYPE,
            imagerId=imager_id,
            temperature=20.0,
            state="Imaging",
            manual=0,
            priority=0,
            scheduledTimeStamp=scheduled,
            blTimeStamp=scheduled,
        )
        session.add(inspection)
        session.flush()
        inspection_id = inspection.containerInspectionId
        directory = visit_dir / "imaging" / str(container_id) / str(inspection_id)
        rows: list[tuple[t.BLSampleImage, int, str, int]] = []
        for number, (sample_id, location, well, drop) in enumerate(samples):
            image = t.BLSampleImage(
                blSampleId=sample_id,
                containerInspectionId=inspection_id,
                micronsPerPixelX=microns_per_pixel,
                micronsPerPixelY=microns_per_pixel,
                blTimeStamp=scheduled + dt.timedelta(seconds=2 * number),
            )
            session.add(image)
            session.flush()
            image.imageFullPath = str(directory / f"{image.blSampleImageId}.jpg")
            rows.append((image, location, well, drop))
        session.flush()
        image_rows = [
            (row.blSampleImageId, row.blSampleId, location, well, drop)
            for row, location, well, drop in rows
        ]

    directory.mkdir(parents=True, exist_ok=True)
    images: list[MockImage] = []
    for image_id, sample_id, location, well, drop in image_rows:
        pixels, truth = render_scene(
            scenes[location],
            flavour=flavour,
            seed=_drop_seed(seed, location),
            time=time,
        )
        path = directory / f"{image_id}.jpg"
        thumbnail = directory / f"{image_id}th.jpg"
        fault = faults.get(location)
        data = encode_jpeg(pixels)
        written = damage(data, fault, seed=image_id) if fault else data
        if written is not None:
            path.write_bytes(written)
            thumbnail.write_bytes(encode_thumbnail(pixels))
        mock = MockImage(
            blSampleImageId=image_id,
            blSampleId=sample_id,
            containerInspectionId=inspection_id,
            location=location,
            well=well,
            drop=drop,
            imageFullPath=str(path),
            thumbnail_path=str(thumbnail),
            truth=truth,
            fault=fault,
        )
        images.append(mock)
        if on_image is not None:
            on_image(mock)

    completed = scheduled + dt.timedelta(seconds=2 * len(image_rows) + 30)
    with transaction(session_factory) as session:
        row = session.get(t.ContainerInspection, inspection_id)
        assert row is not None
        row.state = "Completed"
        row.completedTimeStamp = completed
    return MockInspection(
        containerInspectionId=inspection_id,
        index=index,
        time=time,
        scheduledTimeStamp=scheduled,
        completedTimeStamp=completed,
        images=tuple(images),
    )


def _schedule_hours(count: int) -> list[float]:
    hours = list(SCHEDULE_HOURS[:count])
    while len(hours) < count:
        hours.append(round(hours[-1] * 1.6))
    return hours


def _drop_seed(seed: int, location: int) -> int:
    return seed * 100_003 + location


def _layout(session: Session, name: str) -> _Layout:
    row = session.scalar(select(t.ContainerType).where(t.ContainerType.name == name))
    if row is None:
        known = sorted(n for n in session.scalars(select(t.ContainerType.name)) if n)
        raise ValueError(f"unknown container type {name!r}; this database knows {known}")
    geometry = PlateLayout.from_container_type(
        capacity=row.capacity,
        well_per_row=row.wellPerRow,
        drop_per_well_x=row.dropPerWellX,
        drop_per_well_y=row.dropPerWellY,
        well_drop=row.wellDrop,
        default_drops_x=MOCK_DEFAULT_DROPS_X,
    )
    # Without a capacity the mock fills 8 rows (ISPyB's plates); with one, exactly its wells.
    wells = row.capacity // geometry.drops_per_well if row.capacity else 8 * geometry.wells_per_row
    return _Layout(row.containerTypeId, name, geometry, wells)


def _imager(session: Session, flavour: str) -> int:
    name = f"mock-{flavour}"
    found = session.scalar(select(t.Imager.imagerId).where(t.Imager.name == name))
    if found is not None:
        return found
    imager = t.Imager(name=name, serial=f"MOCK-{flavour.upper()}", temperature=20.0, capacity=1000)
    session.add(imager)
    session.flush()
    return imager.imagerId
