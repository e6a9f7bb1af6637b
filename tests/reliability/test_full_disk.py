"""A full filesystem (a real 512 kB tmpfs): the write fails with ENOSPC naming the file, the old file survives."""

from __future__ import annotations

import contextlib
import errno

import numpy as np
import pytest
import torch

from pivot_monai.engines.checkpoint import atomic_save, load_checkpoint
from pivot_monai.metrics.froc import write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(full_disk):
    old = atomic_save({"model": {"w": torch.ones(4)}, "trainer": {"iteration": 1}}, full_disk / "checkpoint_epoch=1.pt")
    with pytest.raises(OSError) as exc:
        atomic_save({"model": {"w": torch.ones(1_000_000)}, "trainer": {}}, old)
    assert exc.value.errno == errno.ENOSPC and str(old) in str(exc.value) and "unchanged" in str(exc.value)
    assert load_checkpoint(old)["trainer"]["iteration"] == 1
    assert sorted(p.name for p in full_disk.iterdir()) == ["checkpoint_epoch=1.pt"]  # no temporary left


def _candidates(n: int) -> dict[str, ScanCandidates]:
    rng = np.random.default_rng(0)
    return {"1.2.3": ScanCandidates(rng.normal(size=(n, 3)) * 100, rng.uniform(size=n))}


def test_candidates_csv_on_a_full_disk_is_never_left_truncated(full_disk):
    path = write_submission_csv(full_disk / "candidates.csv", _candidates(10))
    before = path.read_text()
    with pytest.raises(OSError) as exc:
        write_submission_csv(path, _candidates(20_000))  # ~1.3 MB of rows
    assert exc.value.errno == errno.ENOSPC and "candidates.csv" in str(exc.value)
    assert path.read_text() == before and sorted(p.name for p in full_disk.iterdir()) == ["candidates.csv"]


def test_preprocessing_onto_a_full_disk_fails_that_scan_and_leaves_no_partial_image(full_disk, tmp_path):
    from pivot_monai.data.geometry import Geometry
    from pivot_monai.data.io import write_image
    from pivot_monai.data.preprocess import PreprocessConfig, preprocess_scan

    geom = Geometry((-60.0, -50.0, -40.0), (2.0, 2.0, 2.5), np.eye(3), (48, 40, 20))
    hu = np.full(geom.size, -1000, np.int16)
    hu[8:40, 6:34, :] = 40
    hu[12:22, 10:30, 3:17] = -850
    scan = write_image(hu, geom, tmp_path / "raw" / "1.2.mhd")
    with open(full_disk / "filler", "wb", buffering=0) as f:  # leave the disk full
        for chunk in (b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
    with pytest.raises(OSError) as exc:
        preprocess_scan(scan, "1.2", [], [], full_disk / "out", PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)))
    assert "image.nii.gz" in str(exc.value) and "cannot write" in str(exc.value)
    out = full_disk / "out" / "1.2"
    assert [p.name for p in out.iterdir()] == []  # no truncated image, no meta.json: the scan is redone next time
