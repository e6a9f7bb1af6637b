from __future__ import annotations

import json

import pytest

from pivot_monai.cli import main
from pivot_monai.data.splits import allocate_counts, create_splits
from tests.conftest import REPO_ROOT


def _fake_processed(root, n_with=14, n_without=6, subsets=None):
    for i in range(n_with + n_without):
        uid = f"1.2.{i:03d}"
        d = root / uid
        d.mkdir(parents=True)
        (d / "image.nii.gz").write_bytes(b"")
        meta = {
            "seriesuid": uid,
            "nodules": [{"world": [0, 0, 0]}] if i < n_with else [],
            "subset": subsets[i] if subsets else "",
        }
        (d / "meta.json").write_text(json.dumps(meta))
    return root


def test_split_is_deterministic_disjoint_complete_and_stratified(tmp_path):
    root = _fake_processed(tmp_path / "p")
    a = create_splits(root, 0.7, 0.15, 0.15, seed=3)
    b = create_splits(root, 0.7, 0.15, 0.15, seed=3)
    assert a == b
    all_uids = [u for v in a.values() for u in v]
    assert sorted(all_uids) == sorted(p.name for p in root.glob("1.2.*")) and len(set(all_uids)) == 20
    for name, uids in a.items():
        has = {json.loads((root / u / "meta.json").read_text())["nodules"] != [] for u in uids}
        assert has == {True, False}, name
    assert create_splits(root, 0.7, 0.15, 0.15, seed=4) != a


def test_split_writes_guide_layout_and_datalist(tmp_path):
    root = _fake_processed(tmp_path / "p")
    splits = create_splits(root, seed=1)
    for folder, key in (("train", "training"), ("val", "validation"), ("test", "test")):
        linked = sorted(p.name for p in (root / folder).iterdir())
        assert linked == splits[key]
        assert all((root / folder / u / "meta.json").exists() for u in linked)
    datalist = json.loads((root / "datalist.json").read_text())
    assert [d["seriesuid"] for d in datalist["validation"]] == splits["validation"]
    assert datalist["training"][0]["image"].endswith("image.nii.gz")
    # re-running relinks instead of failing on existing links
    assert create_splits(root, seed=1) == splits


def test_ratios_must_sum_to_one(tmp_path, caplog):
    root = _fake_processed(tmp_path / "p")
    with pytest.raises(ValueError, match="sum to 1"):
        create_splits(root, 0.7, 0.2, 0.2)
    code = main(["split", "--data-dir", str(root), "--train-ratio", "0.5", "--val-ratio", "0.1", "--test-ratio", "0.1"])
    assert code == 2 and "sum to 1" in caplog.text


def test_folds_from_luna16_subsets(tmp_path):
    subsets = [f"subset{i % 4}" for i in range(20)]
    root = _fake_processed(tmp_path / "p", subsets=subsets)
    splits = create_splits(root, 0.8, 0.2, 0.0, fold=2)
    assert splits["test"] == sorted(f"1.2.{i:03d}" for i in range(20) if i % 4 == 2)
    assert not set(splits["test"]) & set(splits["training"] + splits["validation"])
    with pytest.raises(ValueError, match="--fold must be in 0..3"):
        create_splits(root, fold=7)


def test_allocate_counts_gives_every_split_one_when_possible():
    assert allocate_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert sum(allocate_counts(17, (0.7, 0.15, 0.15))) == 17


def test_script_entry_point(tmp_path):
    import subprocess
    import sys

    root = _fake_processed(tmp_path / "p")
    res = subprocess.run(
        [sys.executable, "scripts/create_splits.py", "--data-dir", str(root), "--seed", "5"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert (root / "datalist.json").exists()
