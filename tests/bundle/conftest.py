"""A tiny processed dataset (phantoms, 2 mm spacing, split into train/val/test) shared by the bundle tests."""

from __future__ import annotations

import numpy as np
import pytest

from pivot_monai.data.annotations import Nodule, write_annotations
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import write_image
from pivot_monai.data.preprocess import PreprocessConfig
from pivot_monai.data.raw_dataset import preprocess_dataset
from pivot_monai.data.splits import create_splits
from tests.conftest import FLIP_Z, _make_phantom, _nodule_in_left_lung

TINY_OVERRIDES = [
    "--data#patch_size",
    "[16,16,16]",
    "--data#crop_margin",
    "4",
    "--data#num_workers",
    "0",
    "--data#samples_per_volume",
    "2",
    "--model#base_filters",
    "4",
    "--model#depth",
    "2",
    "--training#batch_size",
    "2",
    "--device#type",
    "cpu",
    "--logging#log_interval",
    "1",
]


@pytest.fixture(scope="session")
def tiny_processed(tmp_path_factory):
    """Processed dataset root with 8 scans (6 with a nodule), split 4/2/2."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("tiny")
    raw, nodules = root / "raw", []
    for i in range(8):
        direction = FLIP_Z if i % 2 else np.eye(3)
        geom = Geometry((-160.0 + i, -140.0, -250.0), (2.4, 2.4, 3.2), direction, (64, 56, 28))
        centre = _nodule_in_left_lung(geom)
        has = i not in (3, 6)
        hu = _make_phantom(geom, centre if has else np.full(3, 1e6), 10.0, rng)
        write_image(hu, geom, raw / "subset0" / f"1.9.{i}.mhd")
        if has:
            nodules.append(Nodule(f"1.9.{i}", tuple(centre), 10.0, 5.0 if i % 3 else 2.0))
    write_annotations(raw / "annotations.csv", nodules)
    processed = root / "processed"
    report = preprocess_dataset(raw, processed, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), crop_margin_mm=4))
    assert not report["failed"]
    create_splits(processed, 0.5, 0.25, 0.25, seed=0)
    return processed
