"""Staff query results as rows, and the rows as a table, CSV or JSON.

One row builder per view, so the three formats always carry the same columns and values.
Probabilities are rounded to 4 decimals (MariaDB stores them as single-precision FLOAT, so
0.9 reads back as 0.8999999761...); coordinates are native image pixels.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from chimp_worker.ispyb.queries import DropResult, InspectionSummary, Plate, TargetRow

FORMATS = ("table", "csv", "json")
Row = dict[str, Any]

DROP_COLUMNS = (
    "well",
    "drop",
    "location",
    "blSampleId",
    "containerInspectionId",
    "blSampleImageId",
    "state",
    "failureReason",
    "schema",
    "topClass",
    "pCrystal",
    "pClear",
    "pPrecipitant",
    "pOther",
    "crystalTargets",
    "keptTargets",
    "kept",
    "dispenseStatus",
    "dispenseX",
    "dispenseY",
    "dispenseBy",
    "blSamplePositionId",
)
# The per-drop table for people: the columns, ids kept to a minimum.
DROP_TABLE_COLUMNS = (
    "well",
    "drop",
    "location",
    "blSampleImageId",
    "state",
    "schema",
    "topClass",
    "pCrystal",
    "crystalTargets",
    "kept",
    "dispense",
    "dispenseBy",
    "dispenseStatus",
    "failureReason",
)
TARGET_COLUMNS = (
    "well",
    "drop",
    "location",
    "blSampleId",
    "containerInspectionId",
    "blSampleImageId",
    "blSubSampleId",
    "x",
    "y",
    "score",
    "pCrystal",
    "analyser",
    "kept",
)
INSPECTION_COLUMNS = (
    "containerInspectionId",
    "state",
    "completed",
    "inspectionType",
    "images",
    "done",
    "failed",
    "pending",
    "processing",
    "models",
)


def _p(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _xy(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(float(value), 1)


def kept_summary(targets: Sequence[TargetRow]) -> str | None:
    """Why targets were kept by re-processing, e.g. 'queued by staff' or '2 data collected'."""
    reasons = Counter(target.kept for target in targets if target.kept)
    if not reasons:
        return None
    return ", ".join(
        reason if count == 1 else f"{count} {reason}" for reason, count in sorted(reasons.items())
    )


def drop_rows(drops: Sequence[DropResult]) -> list[Row]:
    rows = []
    for drop in drops:
        probabilities = drop.probabilities
        rows.append(
            {
                "well": drop.well,
                "drop": drop.drop,
                "location": drop.location,
                "blSampleId": drop.blSampleId,
                "containerInspectionId": drop.containerInspectionId,
                "blSampleImageId": drop.blSampleImageId,
                "state": drop.state,
                "failureReason": drop.failureReason,
                "schema": drop.schemaName,
                "topClass": drop.topClass,
                "pCrystal": _p(probabilities.get("crystal")),
                "pClear": _p(probabilities.get("clear")),
                "pPrecipitant": _p(probabilities.get("precipitant")),
                "pOther": _p(probabilities.get("other")),
                "crystalTargets": len(drop.targets) if drop.blSampleImageId is not None else None,
                "keptTargets": len(drop.keptTargets) if drop.blSampleImageId is not None else None,
                "kept": kept_summary(drop.targets),
                "dispenseStatus": drop.dispenseStatus,
                "dispenseX": _xy(drop.dispenseX),
                "dispenseY": _xy(drop.dispenseY),
                "dispenseBy": drop.dispenseBy,
                "blSamplePositionId": drop.dispense.blSamplePositionId if drop.dispense else None,
                "dispense": None
                if drop.dispenseX is None or drop.dispenseY is None
                else f"({_xy(drop.dispenseX)}, {_xy(drop.dispenseY)})",
            }
        )
    return rows


def target_rows(targets: Sequence[tuple[DropResult, TargetRow]]) -> list[Row]:
    return [
        {
            "well": drop.well,
            "drop": drop.drop,
            "location": drop.location,
            "blSampleId": target.blSampleId,
            "containerInspectionId": drop.containerInspectionId,
            "blSampleImageId": target.blSampleImageId,
            "blSubSampleId": target.blSubSampleId,
            "x": _xy(target.x),
            "y": _xy(target.y),
            "score": _p(target.score),
            "pCrystal": _p(drop.pCrystal),
            "analyser": target.analyser,
            "kept": target.kept,
        }
        for drop, target in targets
    ]


def inspection_rows(inspections: Sequence[InspectionSummary]) -> list[Row]:
    return [
        {
            "containerInspectionId": inspection.containerInspectionId,
            "state": inspection.state,
            "completed": inspection.completed,
            "inspectionType": inspection.inspection_type,
            "images": inspection.images,
            "done": inspection.done,
            "failed": inspection.failed,
            "pending": inspection.pending,
            "processing": inspection.processing,
            "models": "; ".join(inspection.models),
        }
        for inspection in inspections
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return value


def render(
    rows: Sequence[Row],
    columns: Sequence[str],
    fmt: str,
    *,
    title: str = "",
    meta: dict[str, Any] | None = None,
    width: int | None = None,
) -> str:
    """Rows as ``table`` (for people), ``csv`` (for spreadsheets) or ``json`` (for scripts)."""
    if fmt == "json":
        payload = {**(meta or {}), "rows": [{c: _plain(r.get(c)) for c in columns} for r in rows]}
        return json.dumps(payload, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _plain(row.get(c)) for c in columns])
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    table = Table(title=title or None, box=box.SIMPLE_HEAD, show_lines=False)
    for column in columns:
        numeric = (column.startswith("p") and column[1:2].isupper()) or column in ("x", "y")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(_plain(row.get(c))) for c in columns))
    text = io.StringIO()
    console = Console(file=text, width=width or 240, color_system=None, force_terminal=False)
    console.print(table)
    if not rows:
        console.print("(no rows)")
    return text.getvalue()


def plate_title(plate: Plate, what: str) -> str:
    parts = [f"Plate {plate.barcode}", plate.container_type or "", plate.visit or "", what]
    return " · ".join(part for part in parts if part)
