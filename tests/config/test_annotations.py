"""``data.annotations``: the CSV ``pivot preprocess --config`` reads, and the one training checks the scans against."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pivot_monai.cli import main
from pivot_monai.data.annotations import Nodule, read_annotations, write_annotations
from pivot_monai.data.geometry import Geometry
from pivot_monai.engines.validate import ConfigValueError, check_annotations


@pytest.fixture
def raw_without_csv(make_raw_dataset, tmp_path):
    """A raw dataset of one scan with a nodule, its annotations CSV moved out of the dataset folder."""
    geometry = Geometry((-160.0, -140.0, -250.0), (2.4, 2.4, 3.2), np.eye(3), (64, 56, 28))
    root, _ = make_raw_dataset({"1.7.1": geometry})
    csv = tmp_path / "labels" / "my_annotations.csv"
    csv.parent.mkdir()
    (root / "annotations.csv").rename(csv)
    return root, csv


def _preprocess(root, out, tmp_path, annotations=None):
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  annotations: {annotations}\n" if annotations else "data: {}\n")
    assert main(["preprocess", "-i", str(root), "-o", str(out), "-c", str(config)]) == 0
    return json.loads((out / "1.7.1" / "meta.json").read_text())


def test_preprocess_reads_the_csv_the_config_names(raw_without_csv, tmp_path):
    root, csv = raw_without_csv
    assert _preprocess(root, tmp_path / "without", tmp_path)["nodules"] == []  # no CSV in the dataset folder
    meta = _preprocess(root, tmp_path / "with", tmp_path, annotations=csv)
    assert len(meta["nodules"]) == 1
    assert meta["nodules"][0]["world"] == pytest.approx(list(read_annotations(csv)["1.7.1"][0].world))


def test_training_accepts_scans_made_from_the_csv_and_refuses_others(raw_without_csv, tmp_path):
    root, csv = raw_without_csv
    out = tmp_path / "processed"
    _preprocess(root, out, tmp_path, annotations=csv)
    items = [{"meta": str(out / "1.7.1" / "meta.json")}]
    check_annotations(None, items)  # null: nothing to check
    check_annotations(str(csv), items)
    nodule = read_annotations(csv)["1.7.1"][0]
    outside = Nodule("1.7.1", (900.0, 900.0, 900.0), 6.0, 3.0)  # preprocessing skips a row outside the image
    write_annotations(tmp_path / "with_outside.csv", [nodule, outside])
    check_annotations(str(tmp_path / "with_outside.csv"), items)
    moved = Nodule("1.7.1", (nodule.world[0] + 5.0, *nodule.world[1:]), nodule.diameter_mm, 4.0)
    write_annotations(tmp_path / "moved.csv", [moved])
    with pytest.raises(ConfigValueError, match=r"moved.csv lists 1 nodule\(s\) for 1.7.1 .* holds 1, not the same"):
        check_annotations(str(tmp_path / "moved.csv"), items)
    with pytest.raises(FileNotFoundError, match=r"data.annotations: .*nowhere.csv not found"):
        check_annotations(str(tmp_path / "nowhere.csv"), items)
