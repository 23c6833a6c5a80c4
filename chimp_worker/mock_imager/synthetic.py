"""Synthetic drop micrographs with exact ground truth, deterministic by seed.

The renderer draws a :class:`~chimp_worker.mock_imager.scene.Scene` the way a bright-field
plate imager sees it: plastic and the well's ring, an elliptical drop with a dark meniscus rim
(sometimes cut by the frame), convex crystals with shaded faces, dark edges and shadows,
precipitate texture, phase-separation droplets, fibres and bubbles. The ground truth is made
from the very masks the renderer paints with, so it is exact, not estimated.

Coordinates are (x, y) pixels of the rendered image from the top-left; masks are boolean
(height, width) arrays, stored cropped to their bounding box to keep a plate's truth small.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from chimp_worker.mock_imager.scene import (
    Circle,
    CrystalSpec,
    Ellipse,
    Scene,
    get_flavour,
    random_scene,
)

_SUBPIXEL_BITS = 4  # OpenCV drawing with 1/16-pixel vertex precision


@dataclass(frozen=True, eq=False)
class MaskRegion:
    """A boolean mask stored as its bounding-box crop; ``x0``/``y0`` place it in the image."""

    x0: int
    y0: int
    crop: np.ndarray  # bool (h, w)

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass (x, y) in image pixels."""
        rows, cols = np.nonzero(self.crop)
        return float(cols.mean() + self.x0), float(rows.mean() + self.y0)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Bounding box (x0, y0, x1, y1), inclusive of the last pixel."""
        rows, cols = np.nonzero(self.crop)
        return (
            int(cols.min() + self.x0),
            int(rows.min() + self.y0),
            int(cols.max() + self.x0),
            int(rows.max() + self.y0),
        )

    def contains(self, x: float, y: float) -> bool:
        col, row = round(x) - self.x0, round(y) - self.y0
        if 0 <= row < self.crop.shape[0] and 0 <= col < self.crop.shape[1]:
            return bool(self.crop[row, col])
        return False

    def full(self, width: int, height: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        h, w = self.crop.shape
        mask[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.crop
        return mask


@dataclass(frozen=True, eq=False)
class CrystalTruth:
    """One crystal as visible in the image: inside the drop, not hidden by a later crystal."""

    index: int  # position in Scene.crystals: the same crystal across a time course
    region: MaskRegion
    centroid: tuple[float, float]  # (x, y) centre of mass of the visible mask
    area: int
    at_drop_edge: bool  # the drop's edge cuts it
    touches: tuple[int, ...]  # indices of crystals it touches

    def mask(self, width: int, height: int) -> np.ndarray:
        return self.region.full(width, height)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What a micrograph really shows."""

    flavour: str
    width: int
    height: int
    outcome: str  # one of analysis.CLASS_NAMES
    drop: Ellipse  # the drop's outline; its mask is this ellipse inside the frame
    drop_cut_by_frame: bool
    crystals: tuple[CrystalTruth, ...]
    artefacts: tuple[str, ...]  # "bubbles", "fibres", "phase_separation", "precipitate"
    time: float

    @property
    def drop_mask(self) -> np.ndarray:
        return _ellipse_mask(self.drop, self.width, self.height)

    @property
    def drop_area(self) -> int:
        return int(self.drop_mask.sum())

    def drop_contains(self, x: float, y: float) -> bool:
        """True when pixel (x, y) is inside both the drop and the frame."""
        inside_frame = 0 <= round(x) < self.width and 0 <= round(y) < self.height
        return inside_frame and self.drop.contains(round(x), round(y))

    def crystal_at(self, x: float, y: float) -> int | None:
        """Index of the crystal whose mask holds pixel (x, y), if any."""
        for index, crystal in enumerate(self.crystals):
            if crystal.region.contains(x, y):
                return index
        return None


def render_micrograph(
    flavour: str,
    seed: int,
    outcome: str | None = None,
    *,
    size: tuple[int, int] | None = None,
    time: float = 1.0,
) -> tuple[np.ndarray, GroundTruth]:
    """Render one drop: uint8 (H, W) for greyscale imagers, (H, W, 3) RGB otherwise.

    ``size`` (width, height) renders smaller than the imager's native size for fast tests; the
    scene scales with it. ``time`` in 0..1 is when the drop is imaged: crystals nucleate and
    grow over it, so one seed at increasing times is one drop's time course.
    """
    spec = get_flavour(flavour)
    width, height = size if size is not None else (spec.width, spec.height)
    if width < 32 or height < 32:
        raise ValueError(f"render size {width}x{height} is too small; at least 32 x 32")
    scene = random_scene(seed, width, height, outcome)
    return render_scene(scene, flavour=flavour, seed=seed, time=time)


def render_scene(
    scene: Scene, *, flavour: str, seed: int = 0, time: float = 1.0
) -> tuple[np.ndarray, GroundTruth]:
    """Paint ``scene`` at ``time``; ``seed`` drives only the noise and texture."""
    spec = get_flavour(flavour)
    if not 0.0 <= time <= 1.0:
        raise ValueError(f"time must be within 0..1, got {time}")
    rng = np.random.default_rng([seed, 0x701CE])
    w, h = scene.width, scene.height
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]

    image = _paint_well(scene, xs, ys)
    rho = scene.drop.normalised_radius(xs, ys)
    drop_mask = rho <= 1.0
    _paint_drop(image, scene, rho)
    del rho
    artefacts: list[str] = []
    brown = None
    if scene.precipitate > 0:
        brown = _paint_precipitate(image, scene, drop_mask, rng)
        artefacts.append("precipitate")
    if scene.phase_droplets:
        _paint_phase_droplets(image, scene.phase_droplets, drop_mask)
        artefacts.append("phase_separation")
    if scene.fibres:
        _paint_fibres(image, scene)
        artefacts.append("fibres")
    if scene.bubbles:
        _paint_bubbles(image, scene.bubbles)
        artefacts.append("bubbles")
    # Crystals last, so every pixel of a crystal's true mask shows the crystal itself.
    crystals = _paint_crystals(image, scene, drop_mask, time)
    pixels = _finish(image, scene, spec.greyscale, brown, rng)
    truth = GroundTruth(
        flavour=spec.name,
        width=w,
        height=h,
        outcome="crystals" if crystals else scene.base_outcome,
        drop=scene.drop,
        drop_cut_by_frame=scene.drop_cut_by_frame,
        crystals=crystals,
        artefacts=tuple(artefacts),
        time=time,
    )
    return pixels, truth


# --- painting ----------------------------------------------------------------------------------


def _ellipse_mask(ellipse: Ellipse, width: int, height: int) -> np.ndarray:
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    return ellipse.normalised_radius(xs, ys) <= 1.0


def _paint_well(scene: Scene, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Plastic outside the well, the well floor inside, a dark ring with a bright inner line."""
    well = scene.well
    signed = np.sqrt((xs - np.float32(well.x)) ** 2 + (ys - np.float32(well.y)) ** 2) - np.float32(
        well.r
    )
    ring = np.float32(scene.ring_width)
    image = np.where(signed < 0, np.float32(scene.well_level), np.float32(scene.plastic_level))
    image -= np.float32(0.3) * np.exp(-((signed / ring) ** 2))
    image += np.float32(0.12) * np.exp(-(((signed + 1.6 * ring) / (0.35 * ring)) ** 2))
    return image.astype(np.float32)


def _paint_drop(image: np.ndarray, scene: Scene, rho: np.ndarray) -> None:
    """The drop floor plus the meniscus: a dark band inside the edge, a faint shadow outside."""
    drop = scene.drop
    mean_radius = np.float32(math.sqrt(drop.rx * drop.ry))
    edge_distance = (np.float32(1.0) - rho) * mean_radius  # > 0 inside, pixels
    rim = np.float32(scene.rim_width)
    inside = edge_distance >= 0
    meniscus = np.float32(0.42) * np.exp(-np.maximum(edge_distance, 0) / rim)
    halo = np.float32(0.1) * np.exp(-np.maximum(-edge_distance, 0) / (0.3 * rim))
    image[:] = np.where(inside, np.float32(scene.drop_level) - meniscus, image - halo)


def _paint_precipitate(
    image: np.ndarray, scene: Scene, drop_mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Grainy dark clumps over the drop; returns their weight map for brown tinting."""
    side = scene.short_side
    h, w = image.shape
    grain: np.ndarray = cv2.GaussianBlur(
        rng.standard_normal((h, w), dtype=np.float32), (0, 0), max(0.7, 0.0012 * side)
    )
    grain /= grain.std() + 1e-6
    # The clumps vary slowly: draw them at 1/16 scale and enlarge (a full-size blur of this
    # width costs seconds on a VMXi frame).
    small = (max(4, w // 16), max(4, h // 16))
    cloud = cv2.GaussianBlur(
        rng.standard_normal((small[1], small[0]), dtype=np.float32), (0, 0), 0.03 * side / 16
    )
    cloud = cv2.resize(cloud / (cloud.std() + 1e-6), (w, h), interpolation=cv2.INTER_LINEAR)
    threshold = 1.5 - 1.3 * scene.precipitate
    speckle = np.clip((grain - threshold) / 0.6, 0, 1) * np.clip(0.6 + 0.5 * cloud, 0, 1)
    speckle *= drop_mask
    image -= np.float32(0.45) * speckle
    return speckle


def _paint_phase_droplets(
    image: np.ndarray, droplets: tuple[Circle, ...], drop_mask: np.ndarray
) -> None:
    """Oil-like droplets: bright discs with dark rims, kept inside the drop."""
    h, w = image.shape
    for circle in droplets:
        x0, x1 = max(0, int(circle.x - circle.r - 2)), min(w, int(circle.x + circle.r + 3))
        y0, y1 = max(0, int(circle.y - circle.r - 2)), min(h, int(circle.y + circle.r + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        signed = np.sqrt((xs - circle.x) ** 2 + (ys - circle.y) ** 2) - np.float32(circle.r)
        width = np.float32(max(0.8, 0.15 * circle.r))
        patch = image[y0:y1, x0:x1]
        change = np.where(signed < 0, np.float32(0.06), np.float32(0)) - np.float32(0.3) * np.exp(
            -((signed / width) ** 2)
        )
        patch += change * drop_mask[y0:y1, x0:x1]


def _paint_crystals(
    image: np.ndarray, scene: Scene, drop_mask: np.ndarray, time: float
) -> tuple[CrystalTruth, ...]:
    """Shadows first, then crystals in order (later ones hide earlier ones); returns the truth."""
    h, w = image.shape
    side = scene.short_side
    polygons: list[tuple[int, np.ndarray, CrystalSpec]] = []  # (scene index, vertices, spec)
    for index, spec in enumerate(scene.crystals):
        polygon = spec.polygon_at(time)
        if polygon is not None:
            polygons.append((index, polygon, spec))
    if not polygons:
        return ()
    light = math.radians(scene.light_angle_deg)
    shadow_canvas = np.zeros((h, w), dtype=np.uint8)
    labels = np.zeros((h, w), dtype=np.int16)
    for order, (_index, polygon, _spec) in enumerate(polygons, start=1):
        reach = float(np.ptp(polygon, axis=0).max()) * scene.shadow_length
        offset = np.array([math.cos(light), math.sin(light)]) * reach
        cv2.fillPoly(shadow_canvas, [_fixed_point(polygon + offset)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
        cv2.fillPoly(labels, [_fixed_point(polygon)], order, cv2.LINE_8, _SUBPIXEL_BITS)
    labels[~drop_mask] = 0
    shadow = cv2.GaussianBlur(shadow_canvas.astype(np.float32), (0, 0), max(0.8, 0.004 * side))
    image -= np.float32(0.16) * shadow * (labels == 0) * drop_mask

    edge_px = max(1, round(0.0028 * side))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * edge_px + 1, 2 * edge_px + 1))
    regions: list[MaskRegion] = []
    scene_indices: list[int] = []
    full_polygons: list[np.ndarray] = []
    for order, (index, polygon, spec) in enumerate(polygons, start=1):
        x0, y0 = (max(0, int(v) - 2) for v in polygon.min(axis=0))
        x1, y1 = (int(v) + 3 for v in polygon.max(axis=0))
        x1, y1 = min(w, x1), min(h, y1)
        if x0 >= x1 or y0 >= y1:
            continue
        crop = labels[y0:y1, x0:x1] == order
        if not crop.any():
            continue
        rows, cols = np.nonzero(crop)
        region = MaskRegion(
            x0 + int(cols.min()),
            y0 + int(rows.min()),
            crop[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1],
        )
        _paint_one_crystal(image, region, spec, kernel)
        regions.append(region)
        scene_indices.append(index)
        full_polygons.append(polygon)
    return _crystal_truths(scene_indices, regions, full_polygons, drop_mask)


def _paint_one_crystal(
    image: np.ndarray, region: MaskRegion, spec: CrystalSpec, kernel: np.ndarray
) -> None:
    """Faces shaded by a linear ramp (facets catching the light), edges dark."""
    mask = region.crop
    h, w = mask.shape
    angle = math.radians(spec.facet_angle_deg)
    xs = np.arange(w, dtype=np.float32)[None, :] - w / 2
    ys = np.arange(h, dtype=np.float32)[:, None] - h / 2
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(w, h, 1)
    faces = np.float32(spec.shade) + np.float32(0.25) * ramp
    interior = cv2.erode(
        mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(bool)
    values = np.where(interior, faces, np.float32(0.1))
    patch = image[region.y0 : region.y0 + h, region.x0 : region.x0 + w]
    patch[mask] = values[mask]


def _crystal_truths(
    scene_indices: list[int],
    regions: list[MaskRegion],
    polygons: list[np.ndarray],
    drop_mask: np.ndarray,
) -> tuple[CrystalTruth, ...]:
    h, w = drop_mask.shape
    truths: list[CrystalTruth] = []
    grown = [_grown_box(region, w, h) for region in regions]
    for index, region in enumerate(regions):
        polygon_area = _polygon_area_in_frame(polygons[index], w, h)
        at_edge = region.area < 0.9 * polygon_area and _touches_outside(region, drop_mask)
        touches = tuple(
            other
            for other in range(len(regions))
            if other != index and _regions_touch(region, regions[other], grown[index])
        )
        truths.append(
            CrystalTruth(
                scene_indices[index], region, region.centroid, region.area, at_edge, touches
            )
        )
    return tuple(truths)


def _grown_box(region: MaskRegion, width: int, height: int) -> tuple[int, int, int, int]:
    h, w = region.crop.shape
    return (
        max(0, region.x0 - 2),
        max(0, region.y0 - 2),
        min(width, region.x0 + w + 2),
        min(height, region.y0 + h + 2),
    )


def _regions_touch(a: MaskRegion, b: MaskRegion, box: tuple[int, int, int, int]) -> bool:
    """True when b has a pixel within two pixels of a (8-connected dilation, twice)."""
    x0, y0, x1, y1 = box
    canvas_a = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    canvas_b = np.zeros_like(canvas_a)
    for canvas, region in ((canvas_a, a), (canvas_b, b)):
        h, w = region.crop.shape
        sx0, sy0 = max(region.x0, x0), max(region.y0, y0)
        sx1, sy1 = min(region.x0 + w, x1), min(region.y0 + h, y1)
        if sx0 >= sx1 or sy0 >= sy1:
            if canvas is canvas_b:
                return False
            continue
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = region.crop[
            sy0 - region.y0 : sy1 - region.y0, sx0 - region.x0 : sx1 - region.x0
        ]
    grown: np.ndarray = cv2.dilate(canvas_a, np.ones((5, 5), np.uint8))
    return bool((grown & canvas_b).any())


def _touches_outside(region: MaskRegion, drop_mask: np.ndarray) -> bool:
    h, w = region.crop.shape
    y0, x0 = max(0, region.y0 - 2), max(0, region.x0 - 2)
    y1, x1 = min(drop_mask.shape[0], region.y0 + h + 2), min(drop_mask.shape[1], region.x0 + w + 2)
    outside = ~drop_mask[y0:y1, x0:x1]
    canvas = np.zeros_like(outside, dtype=np.uint8)
    canvas[region.y0 - y0 : region.y0 - y0 + h, region.x0 - x0 : region.x0 - x0 + w] = region.crop
    grown = cv2.dilate(canvas, np.ones((5, 5), np.uint8)).astype(bool)
    return bool((grown & outside).any())


def _polygon_area_in_frame(polygon: np.ndarray, width: int, height: int) -> float:
    clipped = np.clip(polygon, [0, 0], [width - 1, height - 1]).astype(np.float32)
    return float(cv2.contourArea(clipped))


def _paint_fibres(image: np.ndarray, scene: Scene) -> None:
    thickness = max(1, round(scene.fibre_width))
    for fibre in scene.fibres:
        points = _fixed_point(np.asarray(fibre))
        cv2.polylines(image, [points], False, 0.18, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)


def _paint_bubbles(image: np.ndarray, bubbles: tuple[Circle, ...]) -> None:
    for bubble in bubbles:
        centre = (round(bubble.x * 16), round(bubble.y * 16))
        ring = max(1, round(0.18 * bubble.r))
        cv2.circle(image, centre, round(bubble.r * 16), 0.22, ring, cv2.LINE_AA, _SUBPIXEL_BITS)
        highlight = (
            round((bubble.x - 0.35 * bubble.r) * 16),
            round((bubble.y - 0.35 * bubble.r) * 16),
        )
        cv2.circle(
            image, highlight, round(0.15 * bubble.r * 16), 0.97, -1, cv2.LINE_AA, _SUBPIXEL_BITS
        )


def _finish(
    image: np.ndarray,
    scene: Scene,
    greyscale: bool,
    brown: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Optics and sensor: vignetting, a slight blur, noise, then 8 bits (and colour for RGB)."""
    h, w = image.shape
    xs = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
    ys = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
    image *= np.float32(1.0) - np.float32(0.12) * (xs**2 + ys**2) / 2
    image = cv2.GaussianBlur(image, (0, 0), max(0.5, 0.0004 * scene.short_side))
    if greyscale:
        image += rng.normal(0, 0.012, image.shape).astype(np.float32)
        return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    tint = np.asarray(scene.tint, dtype=np.float32)
    rgb = image[:, :, None] * tint
    if brown is not None:
        rgb *= 1 - brown[:, :, None] * np.array([0.0, 0.18, 0.4], dtype=np.float32)
    rgb += rng.normal(0, 0.012, rgb.shape).astype(np.float32)
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def _fixed_point(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)


# --- files -------------------------------------------------------------------------------------


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes: single-channel for (H, W) arrays (as VMXi writes them), RGB for (H, W, 3)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_thumbnail(pixels: np.ndarray, max_side: int = 256, quality: int = 85) -> bytes:
    """The small JPEG an imager writes beside each image (``{id}th.jpg``)."""
    picture = Image.fromarray(pixels)
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
