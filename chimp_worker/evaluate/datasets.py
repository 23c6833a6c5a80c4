"""Labelled image sets on disk: a CSV of (path, label) rows and label maps.

The CSV is the simplest thing a facility can export from its own scoring: one row per image,
a header naming at least ``path`` and ``label`` (any order, any case), optionally
``blSampleImageId`` so results already in ISPyB can be matched without paths. Relative paths
are relative to the CSV's folder, so a data set can be moved as one directory.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.metrics import NAMED_LABEL_MAPS, map_labels

REQUIRED_COLUMNS = ("path", "label")
IMAGE_ID_COLUMN = "blsampleimageid"  # compared case-insensitively


@dataclass(frozen=True)
class LabelledImage:
    """One row of a labelled set."""

    path: Path  # resolved against the CSV's folder
    label: str
    source_path: str  # the path exactly as the CSV spells it (matches imageFullPath)
    line: int  # line number in the CSV, for messages
    image_id: int | None = None  # BLSampleImage.blSampleImageId when the CSV gives it


def read_labelled_csv(
    path: Path, *, check_files: bool = True, image_root: Path | None = None
) -> list[LabelledImage]:
    """Rows of a (path, label) CSV, in file order.

    Raises ``DatasetError`` for a missing file or column, an empty path or label, a repeated
    path, a non-integer image id, and (with ``check_files``) image files that do not exist;
    the message names the lines concerned.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"labels CSV {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"labels CSV {path} cannot be read: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().casefold(): name for name in (reader.fieldnames or [])}
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DatasetError(
            f"labels CSV {path}: header must name columns {', '.join(REQUIRED_COLUMNS)}; "
            f"missing {', '.join(missing)} (header was {reader.fieldnames})"
        )
    root = Path(image_root) if image_root is not None else path.resolve().parent
    rows: list[LabelledImage] = []
    for line, record in enumerate(reader, start=2):
        raw_path = (record.get(columns["path"]) or "").strip()
        label = (record.get(columns["label"]) or "").strip()
        if not raw_path and not label:
            continue  # blank line
        if not raw_path or not label:
            raise DatasetError(f"labels CSV {path} line {line}: both path and label are needed")
        image_id = None
        if IMAGE_ID_COLUMN in columns and (record.get(columns[IMAGE_ID_COLUMN]) or "").strip():
            value = record[columns[IMAGE_ID_COLUMN]].strip()
            if not value.isdigit():
                raise DatasetError(
                    f"labels CSV {path} line {line}: blSampleImageId must be an integer, "
                    f"got {value!r}"
                )
            image_id = int(value)
        resolved = Path(raw_path)
        if not resolved.is_absolute():
            resolved = root / resolved
        rows.append(LabelledImage(resolved, label, raw_path, line, image_id))
    if not rows:
        raise DatasetError(f"labels CSV {path} has no rows")
    repeated = [p for p, n in Counter(str(r.path) for r in rows).items() if n > 1]
    if repeated:
        raise DatasetError(f"labels CSV {path}: paths listed more than once: {repeated[:5]}")
    if check_files:
        absent = [r for r in rows if not r.path.is_file()]
        if absent:
            shown = ", ".join(f"line {r.line}: {r.path}" for r in absent[:5])
            more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
            raise DatasetError(
                f"labels CSV {path}: {len(absent)} image files not found: {shown}{more}"
            )
    return rows


def write_labelled_csv(path: Path, rows: Iterable[tuple[str, str]]) -> int:
    """Write (path, label) rows with a header; returns the number of rows."""
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REQUIRED_COLUMNS)
        for image_path, label in rows:
            writer.writerow((image_path, label))
            count += 1
    return count


def load_label_map(spec: str) -> Mapping[str, str]:
    """A label map by name (``table1``: the paper's VMXi ten-to-four mapping) or from a file:
    a JSON object {from: to} or a two-column CSV (from,to; a header row is allowed)."""
    if spec.casefold() in NAMED_LABEL_MAPS:
        return NAMED_LABEL_MAPS[spec.casefold()]
    path = Path(spec)
    if not path.is_file():
        raise DatasetError(
            f"label map {spec!r} is neither a named map ({', '.join(NAMED_LABEL_MAPS)}) "
            "nor an existing file"
        )
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.casefold() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"label map {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise DatasetError(f"label map {path} must be a JSON object of strings")
        return data
    mapping: dict[str, str] = {}
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DatasetError(f"label map {path} line {line}: expected two columns, from,to")
        source, target = row[0].strip(), row[1].strip()
        if line == 1 and (source.casefold(), target.casefold()) == ("from", "to"):
            continue
        mapping[source] = target
    if not mapping:
        raise DatasetError(f"label map {path} is empty")
    return mapping


def apply_label_map(
    rows: Sequence[LabelledImage], mapping: Mapping[str, str] | None
) -> list[LabelledImage]:
    """The rows with their labels mapped (unchanged when ``mapping`` is None)."""
    if mapping is None:
        return list(rows)
    mapped = map_labels([row.label for row in rows], mapping)
    return [
        LabelledImage(row.path, label, row.source_path, row.line, row.image_id)
        for row, label in zip(rows, mapped, strict=True)
    ]
