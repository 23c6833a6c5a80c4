"""Drop colours of the plate schematic: a red-to-green gradient by P(Crystals), as in the
paper's Figure 3 (green = likely crystals). Pure functions so tests can assert exact values.
"""

from __future__ import annotations

import colorsys

from chimp_worker.report.model import STATE_FAILED, STATE_NO_IMAGE, STATE_PENDING, DropReport

# Fills for drops with no probability to show.
NO_SCORE_FILL = "#d9d9d9"  # processed by an analyser without class probabilities
FAILED_FILL = "#595959"  # the image could not be processed (reason in the drop view)
PENDING_FILL = "#f2f2f2"  # not processed yet
NO_IMAGE_FILL = "#ffffff"  # no image of this drop in the inspection
EMPTY_FILL = "#ffffff"  # no sample at this location

_SATURATION = 0.7
_LIGHTNESS = 0.5


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


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#26d926' -> (38, 217, 38)."""
    value = colour.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"not a #rrggbb colour: {colour!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def drop_fill(drop: DropReport | None) -> str:
    """The schematic colour of one drop: its P(Crystals), else a neutral fill for its state."""
    if drop is None:
        return EMPTY_FILL
    probability = drop.p_crystal
    if probability is not None:
        return probability_colour(probability)
    return {
        STATE_FAILED: FAILED_FILL,
        STATE_PENDING: PENDING_FILL,
        STATE_NO_IMAGE: NO_IMAGE_FILL,
    }.get(drop.state, NO_SCORE_FILL)


def gradient_stops(steps: int = 11) -> list[tuple[float, str]]:
    """Evenly spaced (probability, colour) stops for the legend."""
    return [(i / (steps - 1), probability_colour(i / (steps - 1))) for i in range(steps)]
