"""The plate schematic of one inspection as a PNG, for e-mail and tickets (Pillow, no browser).

Same geometry and colours as the HTML page's SVG, at a configurable scale.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from chimp_worker.report.colours import drop_fill, gradient_stops, hex_to_rgb, text_colour
from chimp_worker.report.model import InspectionReport, PlateReport
from chimp_worker.report.schematic import layout_schematic

_TITLE_HEIGHT = 34
_LEGEND_HEIGHT = 40


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_png(
    plate: PlateReport, inspection_id: int | None = None, *, scale: float = 2.0
) -> Image.Image:
    """Draw the schematic of one inspection (the latest by default) as an RGB image."""
    if not plate.inspections:
        raise ValueError(f"plate {plate.barcode} has no inspection to draw")
    inspection: InspectionReport = (
        plate.inspections[-1] if inspection_id is None else plate.inspection(inspection_id)
    )
    schematic = layout_schematic(plate.layout)
    width = round(schematic.width * scale)
    height = round((schematic.height + _TITLE_HEIGHT + _LEGEND_HEIGHT) * scale)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = _TITLE_HEIGHT * scale

    def box(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x, y, w, h = rect
        return (x * scale, top + y * scale, (x + w) * scale, top + (y + h) * scale)

    title = f"Plate {plate.barcode}: {inspection.label}"
    if plate.analysers:
        title += f" [{', '.join(plate.analysers)}]"
    draw.text((8 * scale, 8 * scale), title, fill="black", font=_font(round(14 * scale)))
    label_font = _font(round(10 * scale))
    for text, x, y in schematic.column_labels + schematic.row_labels:
        draw.text((x * scale, top + y * scale), text, fill="#333333", font=label_font, anchor="ms")

    drops = {drop.location: drop for drop in inspection.drops}
    for well in schematic.wells:
        draw.rectangle(box(well.rect), fill="#f7f7f7", outline="#999999", width=1)
        for drop_box in well.drops:
            drop = drops.get(drop_box.position.location)
            outline = "#bb0000" if drop is not None and drop.state == "failed" else "#555555"
            fill = drop_fill(drop, plate.colour_scale)
            draw.rectangle(
                box(drop_box.rect), fill=fill, outline=outline, width=max(1, round(scale * 0.8))
            )
            if drop is not None and drop.targets:
                x, y, w, h = box(drop_box.rect)
                draw.text(
                    ((x + w) / 2, (y + h) / 2),
                    str(len(drop.targets)),
                    fill=text_colour(fill),
                    font=label_font,
                    anchor="mm",
                )

    legend_top = top + schematic.height * scale + 6 * scale
    stops = gradient_stops(101, plate.colour_scale)
    bar_left, bar_width = 26 * scale, 240 * scale
    for index, (_, colour) in enumerate(stops[:-1]):
        x0 = bar_left + bar_width * index / (len(stops) - 1)
        x1 = bar_left + bar_width * (index + 1) / (len(stops) - 1)
        draw.rectangle((x0, legend_top, x1, legend_top + 12 * scale), fill=hex_to_rgb(colour))
    draw.rectangle(
        (bar_left, legend_top, bar_left + bar_width, legend_top + 12 * scale), outline="#444444"
    )
    middle = legend_top + 6 * scale
    draw.text((bar_left - 4 * scale, middle), "0", fill="#333333", font=label_font, anchor="rm")
    draw.text(
        (bar_left + bar_width + 4 * scale, middle),
        "1   P(Crystals)",
        fill="#333333",
        font=label_font,
        anchor="lm",
    )
    return image


def write_png(
    plate: PlateReport, path: Path, inspection_id: int | None = None, *, scale: float = 2.0
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    render_png(plate, inspection_id, scale=scale).save(partial, format="PNG", optimize=True)
    partial.replace(path)
    return path
