"""Drop colours of the plate schematic by P(Crystals). Pure functions so tests can assert
exact values.

Two scales: ``viridis`` (the default: matplotlib's perceptually uniform, colour-blind-safe
scale, dark purple at 0 to yellow at 1, interpolated between its 11 tenths) and
``red-green`` (the paper's Figure 3: red at 0, yellow at 0.5, green at 1), which staff with
red-green colour blindness cannot read, kept as an option for those used to it.
"""

from __future__ import annotations

import colorsys
import math

from chimp_worker.report.model import STATE_FAILED, STATE_NO_IMAGE, STATE_PENDING, DropReport

# Fills for drops with no probability to show.
NO_SCORE_FILL = "#d9d9d9"  # processed by an analyser without class probabilities
FAILED_FILL = "#595959"  # the image could not be processed (reason in the drop view)
PENDING_FILL = "#f2f2f2"  # not processed yet
NO_IMAGE_FILL = "#ffffff"  # no image of this drop in the inspection
EMPTY_FILL = "#ffffff"  # no sample at this location

_SATURATION = 0.7
_LIGHTNESS = 0.5

COLOUR_SCALES: tuple[str, ...] = ("viridis", "red-green")
DEFAULT_SCALE = "viridis"
# matplotlib's viridis at 0, 0.1 ... 1 (colormaps["viridis"], rounded to 8 bits).
VIRIDIS_TENTHS: tuple[str, ...] = (
    "#440154",
    "#482475",
    "#414487",
    "#355f8d",
    "#2a788e",
    "#21918c",
    "#22a884",
    "#44bf70",
    "#7ad151",
    "#bddf26",
    "#fde725",
)


def probability_colour(probability: float) -> str:
    """Hex colour for a probability: hue 0 (red) at 0, 60 (yellow) at 0.5, 120 (green) at 1.

    HSL with saturation 0.7 and lightness 0.5, so 0 -> #d92626, 0.5 -> #d9d926, 1 -> #26d926.
    Values outside 0..1 are clamped; NaN is refused.
    """
    if probability != probability:  # NaN
        raise ValueError("probability is NaN")
    clamped = min(1.0, max(0.0, float(probability)))
    red, green, blue = colorsys.hls_to_rgb(clamped / 3.0, _LIGHTNESS, _SATURATION)
    return "#{:02x}{:02x}{:02x}".format(*(round(channel * 255) for channel in (red, green, blue)))


def viridis_colour(probability: float) -> str:
    """Hex colour on viridis: linear between its tenths (halves rounded up), so 0.5 -> #21918c,
    0.55 -> #229d88."""
    if probability != probability:  # NaN
        raise ValueError("probability is NaN")
    position = min(1.0, max(0.0, float(probability))) * 10
    low = min(9, int(position))
    fraction = position - low
    a, b = hex_to_rgb(VIRIDIS_TENTHS[low]), hex_to_rgb(VIRIDIS_TENTHS[low + 1])
    mixed = (math.floor(x + (y - x) * fraction + 0.5) for x, y in zip(a, b, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def scale_colour(probability: float, scale: str = DEFAULT_SCALE) -> str:
    """The colour of a probability on ``scale`` (``viridis`` or ``red-green``)."""
    if scale == "viridis":
        return viridis_colour(probability)
    if scale == "red-green":
        return probability_colour(probability)
    raise ValueError(f"unknown colour scale {scale!r}; expected one of {', '.join(COLOUR_SCALES)}")


def text_colour(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (WCAG relative luminance)."""

    def linear(channel: int) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in hex_to_rgb(fill))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "#111111" if luminance > 0.179 else "#ffffff"


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#26d926' -> (38, 217, 38)."""
    value = colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"not a #rrggbb colour: {colour!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def drop_fill(drop: DropReport | None, scale: str = "red-green") -> str:
    """The schematic colour of one drop: its P(Crystals), else a neutral fill for its state."""
    if drop is None:
        return EMPTY_FILL
    probability = drop.p_crystal
    if probability is not None:
        return scale_colour(probability, scale)
    return {
        STATE_FAILED: FAILED_FILL,
        STATE_PENDING: PENDING_FILL,
        STATE_NO_IMAGE: NO_IMAGE_FILL,
    }.get(drop.state, NO_SCORE_FILL)


def gradient_stops(steps: int = 11, scale: str = "red-green") -> list[tuple[float, str]]:
    """Evenly spaced (probability, colour) stops for the legend."""
    return [(i / (steps - 1), scale_colour(i / (steps - 1), scale)) for i in range(steps)]
