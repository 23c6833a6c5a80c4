"""Labelled CSVs, label maps and the mock-imager export that evaluate and train run on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from chimp_worker.errors import DatasetError
from chimp_worker.evaluate.coco import load_coco
from chimp_worker.evaluate.datasets import (
    apply_label_map,
    load_label_map,
    read_labelled_csv,
    write_labelled_csv,
)
from chimp_worker.evaluate.mock_dataset import export_mock_dataset, mask_to_polygons
from chimp_worker.mock_imager.synthetic import render_micrograph

# pycocotools' RLE decode trips numpy 2's __array__ copy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def test_csv_rows_resolve_relative_paths_and_keep_image_ids(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("Label,PATH,blSampleImageId\n3D Crystals,a.jpg,17\nClear,b.jpg,\n")
    rows = read_labelled_csv(csv_path)
    assert [(r.path, r.label, r.image_id, r.line) for r in rows] == [
        (tmp_path.resolve() / "a.jpg", "3D Crystals", 17, 2),
        (tmp_path.resolve() / "b.jpg", "Clear", None, 3),
    ]
    assert rows[0].source_path == "a.jpg"
    mapped = apply_label_map(rows, load_label_map("table1"))
    assert [r.label for r in mapped] == ["crystals", "clear"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.jpg,clear\n", "missing path"),
        ("path,label\na.jpg,\n", "line 2: both path and label"),
        ("path,label\na.jpg,clear\na.jpg,other\n", "more than once"),
        ("path,label\nmissing.jpg,clear\n", r"1 image files not found: line 2: .*missing.jpg"),
        ("path,label,blSampleImageId\na.jpg,clear,x1\n", "must be an integer"),
        ("path,label\n", "has no rows"),
    ],
)
def test_bad_csvs_are_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_labelled_csv(tmp_path / "labels.csv")


def test_label_maps_load_from_json_and_csv_files(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"Needles": "crystals", "Oil": "other"}))
    (tmp_path / "map.csv").write_text("from,to\nNeedles,crystals\nOil,other\n")
    assert load_label_map(str(tmp_path / "map.json")) == {"Needles": "crystals", "Oil": "other"}
    assert load_label_map(str(tmp_path / "map.csv")) == {"Needles": "crystals", "Oil": "other"}
    with pytest.raises(DatasetError, match="neither a named map"):
        load_label_map("table9")
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    with pytest.raises(DatasetError, match="two columns"):
        load_label_map(str(tmp_path / "bad.csv"))


def test_written_csv_reads_back(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert write_labelled_csv(tmp_path / "l.csv", [("x.jpg", "other")]) == 1
    assert read_labelled_csv(tmp_path / "l.csv")[0].label == "other"


def test_traced_polygons_rasterise_back_to_the_exact_mask() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:9, 7:10] = True  # a 3 x 4 speck
    mask[20:35, 20:45] = True
    mask[22:30, 30:40] = False  # a hole
    mask[25, 44] = False
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 50))
    restored = mask_utils.decode(rle).astype(bool)
    outer = mask.copy()
    outer[22:30, 30:40] = True  # outer contours only: holes are filled
    assert np.array_equal(restored, outer)


def test_mock_export_writes_images_labels_and_exact_coco_masks(tmp_path: Path) -> None:
    exported = export_mock_dataset(tmp_path, flavour="xchem", count=8, seed=3, size=(160, 128))
    assert exported.per_class == {"clear": 2, "crystals": 2, "other": 2, "precipitate": 2}
    rows = read_labelled_csv(exported.labels_csv)
    assert [r.label for r in rows[:4]] == ["clear", "crystals", "other", "precipitate"]
    dataset = load_coco(exported.annotations)
    assert dataset.categories == {"drop": 1, "crystal": 2}
    counts = dataset.crystal_counts()
    assert sum(counts.values()) == exported.crystals > 0
    # image 2 is the first 'crystals' scene (seed 3 + 1); its truth is re-rendered here
    _, truth = render_micrograph("xchem", 4, "crystals", size=(160, 128))
    assert counts[2] == len(truth.crystals)
    annotations = [a for a in dataset.data["annotations"] if a["image_id"] == 2]
    for annotation, crystal in zip(annotations[1:], truth.crystals, strict=True):
        rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], 128, 160))
        assert np.array_equal(mask_utils.decode(rle).astype(bool), crystal.mask(160, 128))
        assert annotation["area"] == crystal.area
    drop = annotations[0]
    assert drop["category_id"] == 1
    assert drop["area"] == truth.drop_area
    assert dataset.image_path(dataset.images[1]).is_file()


def test_vmxi_export_has_crystals_only(tmp_path: Path) -> None:
    exported = export_mock_dataset(tmp_path, count=2, outcomes=["crystals"], size=(96, 80))
    assert load_coco(exported.annotations).categories == {"crystal": 1}
    assert exported.per_class == {"crystals": 2}
