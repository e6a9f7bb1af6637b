"""Shared fixtures: a seeded rng, anisotropic geometries and tiny HU phantoms with one known nodule."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pivot_monai.data.annotations import Nodule, write_annotations  # noqa: E402
from pivot_monai.data.geometry import Geometry  # noqa: E402
from pivot_monai.data.io import write_image  # noqa: E402
from pivot_monai.data.preprocess import PreprocessConfig  # noqa: E402
from pivot_monai.data.raw_dataset import preprocess_dataset  # noqa: E402
from pivot_monai.data.splits import create_splits  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

FLIP_Z = np.diag([1.0, 1.0, -1.0])


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """A rotation about z then x: a non-trivial orthonormal direction matrix."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(autouse=True)
def _monai_track_meta_default():
    """Bundle runs call ``monai.data.set_track_meta(data.track_meta)`` process-wide; each test starts at the default."""
    from monai.data import set_track_meta

    set_track_meta(True)
    yield
    set_track_meta(True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def aniso_geometry() -> Geometry:
    """0.7 x 0.7 x 2.5 mm, non-zero origin, identity direction."""
    return Geometry(origin=(-172.3, -145.8, -312.5), spacing=(0.7, 0.7, 2.5), size=(64, 64, 24))


def _make_phantom(
    geometry: Geometry, nodule_world: np.ndarray, diameter_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """(X, Y, Z) int16 HU: air outside, soft-tissue body, two lungs at -850 HU and one solid nodule."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry.size], indexing="ij"), axis=-1)
    world = geometry.index_to_world(idx)
    centre = geometry.index_to_world((np.asarray(geometry.size) - 1) / 2.0)
    rel = world - centre
    ext = np.asarray(geometry.size) * geometry.spacing @ np.abs(geometry.direction.T)
    hu = np.full(geometry.size, -1000.0)
    body = (rel[..., 0] / (0.45 * ext[0])) ** 2 + (rel[..., 1] / (0.42 * ext[1])) ** 2 <= 1.0
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((rel[..., 0] - side * 0.2 * ext[0]) / (0.15 * ext[0])) ** 2 + (rel[..., 1] / (0.3 * ext[1])) ** 2 + (
            rel[..., 2] / (0.42 * ext[2])
        ) ** 2 <= 1.0
        hu[lung] = -850.0
    d2 = np.sum((world - nodule_world) ** 2, axis=-1)
    hu[d2 <= (diameter_mm / 2) ** 2] = 30.0
    hu += rng.normal(0, 10, hu.shape)
    return hu.astype(np.int16)


def _nodule_in_left_lung(geometry: Geometry) -> np.ndarray:
    ext_idx = np.asarray(geometry.size, dtype=float)
    return geometry.index_to_world(np.array([0.3, 0.5, 0.5]) * (ext_idx - 1))


@pytest.fixture
def make_raw_dataset(tmp_path, rng):
    """Factory writing a tiny LUNA16-layout dataset; returns (root, {uid: (geometry, nodule_world, diameter)})."""

    def _make(geometries: dict[str, Geometry], diameter_mm: float = 8.0, with_nodule: dict[str, bool] | None = None):
        root = tmp_path / "raw"
        nodules, truth = [], {}
        for uid, geom in geometries.items():
            centre = _nodule_in_left_lung(geom)
            has = True if with_nodule is None else with_nodule.get(uid, True)
            hu = _make_phantom(geom, centre if has else np.full(3, 1e6), diameter_mm, rng)
            write_image(hu, geom, root / "subset0" / f"{uid}.mhd")
            if has:
                nodules.append(Nodule(uid, tuple(centre), diameter_mm, 4.0))
            truth[uid] = (geom, centre if has else None, diameter_mm)
        write_annotations(root / "annotations.csv", nodules)
        write_annotations(root / "annotations_excluded.csv", [], with_malignancy=False)
        (root / "seriesuids.csv").write_text("seriesuid\n" + "\n".join(geometries) + "\n")
        return root, truth

    return _make


# ------------------------------------------------------------------ a tiny processed dataset for bundle/engine tests
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


def bundle_overrides(pairs: list[str], **extra) -> dict:
    """``{id: value}`` for ConfigWorkflow from ``["--id", "value", ...]`` CLI pairs (YAML literals) and ``extra``."""
    out = {k.lstrip("-"): yaml.safe_load(v) for k, v in zip(pairs[::2], pairs[1::2])}
    out.update(extra)
    return out


def bundle_workflow(config_files, dataset_dir, bundle_root, overrides: dict):
    """An initialised training ``ConfigWorkflow`` of the repository bundle on ``dataset_dir`` with ``overrides``."""
    from monai.bundle import ConfigWorkflow

    configs = REPO_ROOT / "bundle" / "configs"
    wf = ConfigWorkflow(
        config_file=[str(f) for f in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        run_id="training",
        dataset_dir=str(dataset_dir),
        bundle_root=str(bundle_root),
        **overrides,
    )
    wf.initialize()
    return wf
