"""Train/val/test splits of a processed dataset, by seriesuid.

The split is seeded and deterministic, and stratified so every split holds both nodule-bearing and nodule-free
scans. It produces the training guide's layout: ``<data_dir>/{train,val,test}/<seriesuid>`` are *relative symlinks*
to ``<data_dir>/<seriesuid>`` (nothing is copied or moved, and re-running a split just relinks), plus a MONAI
datalist ``<data_dir>/datalist.json`` with ``training``/``validation``/``test`` lists.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SPLIT_DIRS", "allocate_counts", "create_splits", "list_processed", "split_uids"]

logger = logging.getLogger(__name__)

SPLIT_DIRS = {"training": "train", "validation": "val", "test": "test"}


def list_processed(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{seriesuid: meta}`` for every finished scan (``<uid>/meta.json``) directly under ``data_dir``."""
    root = Path(data_dir)
    out = {}
    for meta in sorted(root.glob("*/meta.json")):
        if meta.parent.is_symlink():
            continue
        out[meta.parent.name] = json.loads(meta.read_text())
    return out


def allocate_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), giving each split at least one item when ``n`` allows."""
    raw = np.asarray(ratios, dtype=float) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    if n >= len(ratios):
        for i in range(len(ratios)):
            while counts[i] == 0 and ratios[i] > 0:
                j = int(np.argmax(counts))
                counts[j] -= 1
                counts[i] += 1
    return counts.tolist()


def _check_ratios(ratios: tuple[float, float, float]) -> None:
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(
            f"--train-ratio/--val-ratio/--test-ratio must be >= 0 and sum to 1, got {list(ratios)} "
            f"(sum {sum(ratios):.4f}); e.g. 0.7 0.15 0.15"
        )


def split_uids(
    metas: dict[str, dict[str, Any]], ratios: tuple[float, float, float], seed: int = 0
) -> dict[str, list[str]]:
    """Stratified split of seriesuids into ``training``/``validation``/``test``.

    Nodule-bearing and nodule-free scans are shuffled (seeded) and split separately by ``ratios``.
    """
    _check_ratios(ratios)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {k: [] for k in SPLIT_DIRS}
    for has_nodule in (True, False):
        group = sorted(uid for uid, m in metas.items() if bool(m.get("nodules")) == has_nodule)
        group = [group[i] for i in rng.permutation(len(group))]
        start = 0
        for name, count in zip(SPLIT_DIRS, allocate_counts(len(group), ratios)):
            out[name].extend(group[start : start + count])
            start += count
    for name, uids in out.items():
        kinds = {bool(metas[u].get("nodules")) for u in uids}
        if uids and len(kinds) < 2:
            logger.warning(
                "split %s has only %s scans (too few scans to stratify)",
                name,
                "nodule-bearing" if True in kinds else "nodule-free",
            )
    return {k: sorted(v) for k, v in out.items()}


def _fold_split(
    metas: dict[str, dict[str, Any]], fold: int, ratios: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    subsets = sorted({m.get("subset", "") for m in metas.values()} - {""})
    if not subsets:
        raise ValueError(
            "--fold needs LUNA16-style subsetN/ folders in the raw data (recorded as 'subset' in "
            "meta.json by preprocessing); none were found"
        )
    if not 0 <= fold < len(subsets):
        raise ValueError(f"--fold must be in 0..{len(subsets) - 1} (subsets found: {subsets}), got {fold}")
    test_subset = subsets[fold]
    rest = {u: m for u, m in metas.items() if m.get("subset", "") != test_subset}
    train_val = ratios[0] + ratios[1]
    inner = split_uids(rest, (ratios[0] / train_val, ratios[1] / train_val, 0.0), seed)
    inner["test"] = sorted(u for u, m in metas.items() if m.get("subset", "") == test_subset)
    return inner


def create_splits(
    data_dir: str | Path,
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    seed: int = 42,
    fold: int | None = None,
) -> dict[str, list[str]]:
    """Split a processed dataset and write the ``train/val/test`` link folders and ``datalist.json``.

    Args:
        data_dir: processed dataset (``<uid>/image.nii.gz``, ``label.nii.gz``, ``meta.json``).
        train_ratio, val_ratio, test_ratio: fractions summing to 1. Defaults 0.7/0.15/0.15.
        seed: shuffling seed. Default 42.
        fold: when given, the test split is LUNA16 ``subset<fold>`` (in sorted subset order) and the other subsets
            are split into train/val by ``train_ratio:val_ratio``.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        ValueError: bad ratios, unknown fold, or no processed scans.
    """
    root = Path(data_dir)
    metas = list_processed(root)
    if not metas:
        raise ValueError(f"{root}: no processed scans (<seriesuid>/meta.json); run `pivot preprocess` first")
    ratios = (float(train_ratio), float(val_ratio), float(test_ratio))
    splits = _fold_split(metas, fold, ratios, seed) if fold is not None else split_uids(metas, ratios, seed)
    datalist: dict[str, Any] = {"seed": seed, "fold": fold}
    for name, folder in SPLIT_DIRS.items():
        split_dir = root / folder
        if split_dir.exists():
            shutil.rmtree(split_dir)
        split_dir.mkdir()
        for uid in splits[name]:
            (split_dir / uid).symlink_to(Path("..") / uid, target_is_directory=True)
        datalist[name] = [
            {
                "image": f"{uid}/image.nii.gz",
                "label": f"{uid}/label.nii.gz",
                "meta": f"{uid}/meta.json",
                "seriesuid": uid,
            }
            for uid in splits[name]
        ]
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    logger.info("split %d scans: %s", len(metas), {k: len(v) for k, v in splits.items()})
    return splits
