"""What a synthetic micrograph shows, as plain data: the well, the drop, crystals, artefacts.

A :class:`Scene` is built in the pixel coordinates of the image it will be rendered at, (x, y)
from the top-left, with every length drawn relative to the image's shorter side. The same seed
therefore gives the same picture, proportionally, at any render size: tests render small,
the demo renders at the imager's real size.

Crystals carry the time at which they nucleate, so one scene rendered at several times is a
time course of the same drop with crystals appearing and growing (the mock imager's
inspection schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from chimp_worker.analysis import CLASS_NAMES

# Outcome weights when none is asked for: roughly a screening plate's mix.
OUTCOME_WEIGHTS: dict[str, float] = {
    "crystals": 0.4,
    "clear": 0.2,
    "precipitate": 0.25,
    "other": 0.15,
}


@dataclass(frozen=True)
class Flavour:
    """An imager's native picture: size, colour and pixel size."""

    name: str
    width: int
    height: int
    greyscale: bool
    microns_per_pixel: float  # at the native size


FLAVOURS: dict[str, Flavour] = {
    # Formulatrix Rock Imager at VMXi: 2532 x 2028 single-channel JPEGs.
    "vmxi": Flavour("vmxi", 2532, 2028, greyscale=True, microns_per_pixel=1.6),
    # XChem's imager: 1224 x 1024 colour JPEGs of a wider field.
    "xchem": Flavour("xchem", 1224, 1024, greyscale=False, microns_per_pixel=2.9),
}


def get_flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(
            f"unknown imager flavour {name!r}; expected one of {sorted(FLAVOURS)}"
        ) from None


@dataclass(frozen=True)
class Circle:
    x: float
    y: float
    r: float


def _point(value: float) -> np.ndarray:
    """One coordinate as a 0-d float32 array, for the array-wise ``Ellipse.normalised_radius``."""
    return np.asarray(value, dtype=np.float32)


@dataclass(frozen=True)
class Ellipse:
    """A rotated ellipse: centre, semi-axes along its own axes, rotation in degrees."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle_deg: float = 0.0

    def normalised_radius(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """rho for each (x, y): < 1 inside, 1 on the edge; xs, ys broadcast ((1, W), (H, 1))."""
        theta = math.radians(self.angle_deg)
        dx = xs - np.float32(self.cx)
        dy = ys - np.float32(self.cy)
        u = dx * np.float32(math.cos(theta)) + dy * np.float32(math.sin(theta))
        v = dy * np.float32(math.cos(theta)) - dx * np.float32(math.sin(theta))
        return np.sqrt((u / np.float32(self.rx)) ** 2 + (v / np.float32(self.ry)) ** 2)

    def contains(self, x: float, y: float) -> bool:
        rho = self.normalised_radius(_point(x), _point(y))
        return bool(rho <= 1.0)

    def point_at(self, rho: float, phi: float) -> tuple[float, float]:
        """The point at normalised radius rho and parametric angle phi (radians)."""
        theta = math.radians(self.angle_deg)
        u, v = rho * self.rx * math.cos(phi), rho * self.ry * math.sin(phi)
        return (
            self.cx + u * math.cos(theta) - v * math.sin(theta),
            self.cy + u * math.sin(theta) + v * math.cos(theta),
        )


@dataclass(frozen=True)
class CrystalSpec:
    """A convex crystal at full size; it nucleates at ``appears_at`` (0..1) and then grows."""

    vertices: tuple[tuple[float, float], ...]  # convex polygon, (x, y) pixels
    shade: float  # face brightness 0..1
    facet_angle_deg: float  # direction of the brightness ramp across the faces
    appears_at: float = 0.0

    @property
    def centre(self) -> tuple[float, float]:
        points = np.asarray(self.vertices)
        return float(points[:, 0].mean()), float(points[:, 1].mean())

    def size_factor(self, time: float) -> float:
        """Linear size relative to full grown at ``time`` in 0..1; 0 before it nucleates."""
        if time < self.appears_at:
            return 0.0
        progress = (
            1.0 if self.appears_at >= 1.0 else (time - self.appears_at) / (1 - self.appears_at)
        )
        return 0.35 + 0.65 * min(1.0, max(0.0, progress))

    def polygon_at(self, time: float) -> np.ndarray | None:
        """Vertices (N, 2) at ``time``, scaled about the centre; None before it nucleates."""
        factor = self.size_factor(time)
        if factor <= 0:
            return None
        points = np.asarray(self.vertices, dtype=np.float64)
        centre = points.mean(axis=0)
        return centre + (points - centre) * factor


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one micrograph, in render pixels."""

    width: int
    height: int
    base_outcome: str  # what the drop is without crystals: clear, precipitate or other
    well: Circle
    ring_width: float
    plastic_level: float
    well_level: float
    drop: Ellipse
    drop_level: float
    rim_width: float
    crystals: tuple[CrystalSpec, ...] = ()
    precipitate: float = 0.0  # 0 none .. 1 heavy
    phase_droplets: tuple[Circle, ...] = ()
    fibres: tuple[tuple[tuple[float, float], ...], ...] = ()
    fibre_width: float = 2.0
    bubbles: tuple[Circle, ...] = ()
    light_angle_deg: float = 45.0
    shadow_length: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @property
    def drop_cut_by_frame(self) -> bool:
        return _ellipse_leaves_frame(self.drop, self.width, self.height)

    def with_crystals(self, crystals: tuple[CrystalSpec, ...]) -> Scene:
        return replace(self, crystals=crystals)


def _ellipse_leaves_frame(ellipse: Ellipse, width: int, height: int) -> bool:
    for phi in np.linspace(0, 2 * math.pi, 360, endpoint=False):
        x, y = ellipse.point_at(1.0, float(phi))
        if x < 0 or y < 0 or x > width - 1 or y > height - 1:
            return True
    return False


# --- time courses ------------------------------------------------------------------------------

# How a plate's crystal drops nucleate over a schedule: a share shows crystals from the first
# inspection, the others start later, at a time drawn uniformly in ONSET_RANGE (0..1 of the
# schedule). Drawn from a stream of their own, so the scenes (and every image rendered at
# time 1) are exactly as without a schedule.
ONSET_AT_START = 0.35
ONSET_RANGE = (0.1, 0.8)


def nucleation_onset(seed: int) -> float:
    """When (0..1 of the schedule) a crystal drop of this seed first shows a crystal."""
    rng = np.random.default_rng([seed, 0x0715E7])
    if rng.random() < ONSET_AT_START:
        return 0.0
    return round(float(rng.uniform(*ONSET_RANGE)), 4)


def with_nucleation_onset(scene: Scene, onset: float) -> Scene:
    """The same drop with its crystals nucleating from ``onset`` on instead of from 0.

    Each crystal's own delay is compressed into the time left after the onset, so the first
    crystal appears at ``onset`` and every crystal is full grown at time 1 as before.
    """
    if not 0.0 <= onset < 1.0:
        raise ValueError(f"onset must be within 0..1 (exclusive), got {onset}")
    if onset == 0.0 or not scene.crystals:
        return scene
    return scene.with_crystals(
        tuple(
            replace(crystal, appears_at=onset + crystal.appears_at * (1.0 - onset))
            for crystal in scene.crystals
        )
    )


# --- random scenes -----------------------------------------------------------------------------


def random_scene(seed: int, width: int, height: int, outcome: str | None = None) -> Scene:
    """A plausible drop with the given outcome (drawn from OUTCOME_WEIGHTS when None)."""
    rng = np.random.default_rng([seed, 0x5CE1E])
    if outcome is None:
        names = list(OUTCOME_WEIGHTS)
        weights = np.array([OUTCOME_WEIGHTS[name] for name in names])
        outcome = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if outcome not in CLASS_NAMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {CLASS_NAMES}")
    side = min(width, height)

    drop = _random_drop(rng, width, height)
    well_radius = max(drop.rx, drop.ry) * rng.uniform(1.25, 1.5)
    well = Circle(
        drop.cx + rng.uniform(-0.05, 0.05) * side,
        drop.cy + rng.uniform(-0.05, 0.05) * side,
        max(well_radius, 0.5 * side),
    )
    well_level = float(rng.uniform(0.55, 0.68))
    scene = Scene(
        width=width,
        height=height,
        base_outcome="clear",
        well=well,
        ring_width=0.02 * side,
        plastic_level=well_level - float(rng.uniform(0.12, 0.2)),
        well_level=well_level,
        drop=drop,
        drop_level=well_level + float(rng.uniform(0.06, 0.14)),
        rim_width=float(rng.uniform(0.02, 0.035)) * side,
        light_angle_deg=float(rng.uniform(0, 360)),
        shadow_length=float(rng.uniform(0.15, 0.35)),
        tint=(float(rng.uniform(0.9, 1.0)), float(rng.uniform(0.92, 1.0)), 1.0),
    )
    if rng.random() < 0.25:  # bubbles turn up in any kind of drop
        scene = replace(
            scene, bubbles=_random_circles(rng, drop, int(rng.integers(1, 3)), side, 0.02, 0.06)
        )

    if outcome == "crystals":
        base = "precipitate" if rng.random() < 0.25 else "clear"
        density = float(rng.uniform(0.15, 0.35)) if base == "precipitate" else 0.0
        return replace(
            scene,
            base_outcome=base,
            precipitate=density,
            crystals=_random_crystals(rng, drop, width, height),
        )
    if outcome == "precipitate":
        return replace(scene, base_outcome="precipitate", precipitate=float(rng.uniform(0.55, 1.0)))
    if outcome == "other":
        if rng.random() < 0.55:
            count = int(rng.integers(25, 90))
            droplets = _random_circles(rng, drop, count, side, 0.006, 0.03)
            return replace(scene, base_outcome="other", phase_droplets=droplets)
        fibres = tuple(_random_fibre(rng, drop, side) for _ in range(int(rng.integers(1, 4))))
        return replace(scene, base_outcome="other", fibres=fibres, fibre_width=0.003 * side)
    return scene  # clear


def _random_drop(rng: np.random.Generator, width: int, height: int) -> Ellipse:
    side = min(width, height)
    rx = side * rng.uniform(0.27, 0.38)
    ry = rx * rng.uniform(0.78, 1.0)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * side
    cy = height / 2 + rng.uniform(-0.08, 0.08) * side
    if rng.random() < 0.15:  # dispensed off-centre: the frame cuts the drop
        edge = int(rng.integers(4))
        overhang = rng.uniform(0.1, 0.3) * rx
        if edge == 0:
            cx = rx - overhang
        elif edge == 1:
            cx = width - rx + overhang
        elif edge == 2:
            cy = ry - overhang
        else:
            cy = height - ry + overhang
    return Ellipse(float(cx), float(cy), float(rx), float(ry), float(rng.uniform(0, 180)))


def _random_circles(
    rng: np.random.Generator, drop: Ellipse, count: int, side: int, r_min: float, r_max: float
) -> tuple[Circle, ...]:
    circles = []
    for _ in range(count):
        rho = 0.85 * math.sqrt(rng.random())
        x, y = drop.point_at(rho, rng.uniform(0, 2 * math.pi))
        circles.append(
            Circle(x, y, float(side * math.exp(rng.uniform(math.log(r_min), math.log(r_max)))))
        )
    return tuple(circles)


def _random_fibre(
    rng: np.random.Generator, drop: Ellipse, side: int
) -> tuple[tuple[float, float], ...]:
    """A smooth random walk through the drop, often running past its edge (contamination)."""
    x, y = drop.point_at(0.6 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi))
    heading = rng.uniform(0, 2 * math.pi)
    step = 0.02 * side
    points = [(x, y)]
    for _ in range(int(rng.integers(15, 40))):
        heading += rng.normal(0, 0.25)
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        points.append((float(x), float(y)))
    return tuple(points)


def _random_crystals(
    rng: np.random.Generator, drop: Ellipse, width: int, height: int
) -> tuple[CrystalSpec, ...]:
    """1 to 25 convex crystals: mostly a few of varied size, sometimes a shower of small ones.

    The first is always well inside the drop and of a fair size, and nucleates first, so a
    drop with crystals shows at least one at every inspection. Some touch a neighbour, some sit
    on the drop edge (and are cut by it).
    """
    side = min(width, height)
    roll = rng.random()
    if roll < 0.15:
        count, size_range = int(rng.integers(12, 26)), (0.012, 0.03)
    elif roll < 0.3:
        count, size_range = 1, (0.05, 0.09)
    else:
        count, size_range = int(rng.integers(2, 9)), (0.015, 0.07)
    placed: list[tuple[float, float, float]] = []  # x, y, circumradius
    crystals: list[CrystalSpec] = []
    for index in range(count):
        for _attempt in range(40):
            low, high = size_range
            if index == 0:
                low = max(low, 0.55 * high)
            radius = side * math.exp(rng.uniform(math.log(low), math.log(high)))
            elongation = float(rng.choice([1.0, 1.3, 1.8, 2.5, 3.5]))
            vertices = _convex_polygon(rng, radius, elongation)
            circumradius = float(np.hypot(vertices[:, 0], vertices[:, 1]).max())
            kind = rng.random()
            if index == 0:
                x, y = drop.point_at(0.55 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi))
            elif kind < 0.2 and placed:  # touching an earlier crystal
                px, py, pr = placed[int(rng.integers(len(placed)))]
                direction = rng.uniform(0, 2 * math.pi)
                distance = 0.8 * (pr + circumradius)
                x, y = px + distance * math.cos(direction), py + distance * math.sin(direction)
            elif kind < 0.4:  # on the drop edge
                x, y = drop.point_at(rng.uniform(0.92, 1.02), rng.uniform(0, 2 * math.pi))
            else:
                x, y = drop.point_at(0.85 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi))
            touching = index > 0 and kind < 0.2
            if not _placement_ok(x, y, circumradius, placed, touching, drop, width, height):
                continue
            placed.append((x, y, circumradius))
            crystals.append(
                CrystalSpec(
                    vertices=tuple((float(x + vx), float(y + vy)) for vx, vy in vertices),
                    shade=float(
                        rng.uniform(0.2, 0.42) if rng.random() < 0.6 else rng.uniform(0.92, 1.0)
                    ),
                    facet_angle_deg=float(rng.uniform(0, 360)),
                    appears_at=0.0 if index == 0 else float(rng.uniform(0.0, 0.6)),
                )
            )
            break
    return tuple(crystals)


def _placement_ok(
    x: float,
    y: float,
    radius: float,
    placed: list[tuple[float, float, float]],
    touching: bool,
    drop: Ellipse,
    width: int,
    height: int,
) -> bool:
    if not (0 <= x < width and 0 <= y < height):
        return False
    if float(drop.normalised_radius(_point(x), _point(y))) > 1.02:
        return False
    for px, py, pr in placed:
        gap = math.hypot(x - px, y - py)
        if touching:
            if gap < 0.6 * (pr + radius):
                return False
        elif gap < 1.1 * (pr + radius):
            return False
    return True


def _convex_polygon(rng: np.random.Generator, radius: float, elongation: float) -> np.ndarray:
    """A convex polygon (N, 2) around the origin of about pi * radius**2 area, rotated at random."""
    sides = int(rng.choice([4, 5, 6, 6, 8]))
    angles = np.sort(
        np.linspace(0, 2 * math.pi, sides, endpoint=False) + rng.uniform(-0.25, 0.25, sides)
    )
    radii = radius * rng.uniform(0.88, 1.12, sides)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    points *= np.array([math.sqrt(elongation), 1 / math.sqrt(elongation)])
    rotation = rng.uniform(0, math.pi)
    matrix = np.array(
        [[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]]
    )
    points = points @ matrix.T
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)
    return hull.astype(np.float64)
