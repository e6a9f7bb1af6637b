"""The hard-negative pool shared by the mining handler and the crop sampler, and the false-positive maths.

:class:`HardNegativePool` maps a ``seriesuid`` to at most ``pool_size`` voxel indices where the model fired without a
nodule, hardest (highest score) first. Indices are in the grid of the processed volume as ``LoadImaged`` reads it,
the grid :class:`~pivot_monai.transforms.sampling.NoduleCropSamplerd` crops from.

**Data-loader workers.** Workers are separate processes holding a copy of the pool made when they started; the
mining handler fills the pool in the main process. With ``path`` set, :meth:`HardNegativePool.publish` writes the
pool atomically to a small JSON file and :meth:`HardNegativePool.get` reloads it (one ``os.stat`` per call) when it
has changed, so persistent workers see every mining round without a restart. The file carries a random token of the
pool that wrote it, so a stale file from an earlier run is ignored, and under ``torchrun`` each rank uses its own
file (``<stem>.rank<RANK><suffix>``). The checkpoint, not the file, is the durable copy: :meth:`state_dict` /
:meth:`load_state_dict` let ignite's ``Checkpoint`` save and restore it (tensors and strings only, so
``torch.load(weights_only=True)`` reads it).

Nothing here imports ignite.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Entry", "HardNegativePool", "false_positive_mask", "merge_mined", "select_false_positives"]

logger = logging.getLogger(__name__)

Entry = tuple[tuple[int, int, int], float]
"""One pooled hard negative: ``((i, j, k) voxel index, score)``."""


def _sorted(entries: Iterable[Entry]) -> list[Entry]:
    """Hardest first; ties broken by index, so the order never depends on arrival order."""
    clean = [((int(i[0]), int(i[1]), int(i[2])), float(s)) for i, s in entries]
    return sorted(clean, key=lambda e: (-e[1], e[0]))


class HardNegativePool:
    """``{seriesuid: [(voxel index, score), ...]}``, at most ``pool_size`` entries per scan, hardest first.

    Args:
        pool_size: entries kept per scan (``training.hard_negative_mining.pool_size``). Default 20.
        path: JSON file through which data-loader workers see updates (module docstring); ``None`` keeps the pool in
            memory, which only the main process sees (``data.num_workers: 0``).

    Raises:
        ValueError: ``pool_size`` < 1.

    Example:
        >>> pool = HardNegativePool(pool_size=2)
        >>> pool.update("uid", [((1, 2, 3), 0.4), ((4, 5, 6), 0.9), ((7, 8, 9), 0.6)])
        >>> pool.get("uid")
        [((4, 5, 6), 0.9), ((7, 8, 9), 0.6)]
    """

    def __init__(self, pool_size: int = 20, path: str | Path | None = None) -> None:
        if isinstance(pool_size, bool) or int(pool_size) < 1:
            raise ValueError(f"training.hard_negative_mining.pool_size must be >= 1, got {pool_size!r}")
        self.pool_size = int(pool_size)
        self.path = Path(path) if path is not None else None
        self.token = uuid.uuid4().hex
        self.version = 0
        self._entries: dict[str, list[Entry]] = {}
        self._file_key: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------------------------------------ reading
    def get(self, seriesuid: str) -> list[Entry]:
        """Pooled entries of ``seriesuid``, hardest first (empty for an unknown scan)."""
        self._refresh()
        return list(self._entries.get(str(seriesuid), ()))

    def seriesuids(self) -> list[str]:
        """Scans with at least one entry, sorted."""
        self._refresh()
        return sorted(k for k, v in self._entries.items() if v)

    def __len__(self) -> int:
        """Total number of entries over all scans."""
        self._refresh()
        return sum(len(v) for v in self._entries.values())

    def __repr__(self) -> str:
        return f"HardNegativePool(pool_size={self.pool_size}, scans={len(self._entries)}, path={self.path})"

    # ------------------------------------------------------------------------------------------------ writing
    def update(self, seriesuid: str, entries: Iterable[Entry]) -> None:
        """Replace the entries of ``seriesuid`` with the hardest ``pool_size`` of ``entries``.

        Used after re-mining a scan: negatives the current model no longer fires on drop out.
        """
        kept = _sorted(entries)[: self.pool_size]
        if kept:
            self._entries[str(seriesuid)] = kept
        else:
            self._entries.pop(str(seriesuid), None)

    def add(self, seriesuid: str, entries: Iterable[Entry]) -> None:
        """Merge ``entries`` into those of ``seriesuid`` (an index seen twice keeps its higher score), keep the hardest
        ``pool_size``."""
        best: dict[tuple[int, int, int], float] = {}
        for index, score in [*self._entries.get(str(seriesuid), ()), *_sorted(entries)]:
            best[index] = max(score, best.get(index, -np.inf))
        self.update(seriesuid, best.items())

    def clear(self) -> None:
        """Remove every entry."""
        self._entries.clear()

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """``{"pool_size": int, "entries": {seriesuid: (N, 4) float64 tensor of [i, j, k, score]}}``."""
        return {
            "pool_size": self.pool_size,
            "entries": {
                uid: torch.tensor([[*i, s] for i, s in v], dtype=torch.float64).reshape(-1, 4)
                for uid, v in sorted(self._entries.items())
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (and publish to the worker file).

        Raises:
            KeyError: ``state_dict`` has no ``"entries"``.
        """
        if "entries" not in state_dict:
            raise KeyError(f"hard-negative pool state needs 'entries', got keys {sorted(state_dict)}")
        self._entries = {}
        for uid, rows in state_dict["entries"].items():
            rows = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, 4).tolist()
            self.update(uid, [((int(r[0]), int(r[1]), int(r[2])), float(r[3])) for r in rows])
        self.publish()

    # ------------------------------------------------------------------------------------------------ worker file
    def file(self) -> Path | None:
        """The file this process (and its workers) use: ``path``, per rank under ``torchrun``."""
        if self.path is None:
            return None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            rank = os.environ.get("RANK", "0")
            return self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}")
        return self.path

    def publish(self) -> None:
        """Write the pool to :meth:`file` atomically (no-op without ``path``)."""
        target = self.file()
        if target is None:
            return
        self.version += 1
        payload = {
            "token": self.token,
            "version": self.version,
            "pool_size": self.pool_size,
            "entries": {uid: [[*i, s] for i, s in v] for uid, v in sorted(self._entries.items())},
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, target)
        self._file_key = self._stat(target)

    @staticmethod
    def _stat(target: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        target = self.file()
        if target is None:
            return
        key = self._stat(target)
        if key is None or key == self._file_key:
            return
        self._file_key = key
        try:
            payload = json.loads(target.read_text())
        except (OSError, ValueError) as err:  # replaced or half-visible on an odd filesystem: keep what we have
            logger.debug("hard-negative pool file %s unreadable (%s); keeping version %d", target, err, self.version)
            self._file_key = None
            return
        if payload.get("token") != self.token or int(payload.get("version", 0)) <= self.version:
            return
        self.version = int(payload["version"])
        self._entries = {
            uid: _sorted(((r[0], r[1], r[2]), r[3]) for r in rows) for uid, rows in payload.get("entries", {}).items()
        }


def false_positive_mask(
    world: np.ndarray, nodules: np.ndarray, margin_mm: float = 0.0, excluded_diameter_mm: float = 10.0
) -> np.ndarray:
    """Which candidates hit no finding: ``(K,)`` bool for ``(K, 3)`` world-mm candidates.

    A candidate hits a finding (nodule or excluded finding of the ``(M, 7)`` nodule table, see
    :func:`~pivot_monai.transforms.nodules.nodule_table`) when it lies within the finding's radius plus
    ``margin_mm``, as in LUNA16 scoring. Padding rows (kind 0) are ignored; excluded findings without a diameter
    count as ``excluded_diameter_mm`` wide.
    """
    world = np.asarray(world, dtype=float).reshape(-1, 3)
    table = np.asarray(nodules, dtype=float).reshape(-1, 7)
    table = table[table[:, 5] > 0]
    if len(world) == 0 or len(table) == 0:
        return np.ones(len(world), dtype=bool)
    diam = np.where(table[:, 3] > 0, table[:, 3], excluded_diameter_mm)
    dist = np.linalg.norm(world[:, None, :] - table[None, :, :3], axis=-1)
    return ~np.any(dist <= diam[None, :] / 2.0 + float(margin_mm), axis=1)


def select_false_positives(
    index: np.ndarray,
    score: np.ndarray,
    world: np.ndarray,
    nodules: np.ndarray,
    shape: Sequence[int],
    score_threshold: float = 0.5,
    limit: int = 20,
    margin_mm: float = 0.0,
) -> list[Entry]:
    """Hard negatives of one scan from its decoded candidates.

    Args:
        index: (K, 3) candidate voxel indices in the input grid (float, sub-voxel).
        score: (K,) candidate probabilities.
        world: (K, 3) the same candidates in world mm.
        nodules: (M, 7) nodule table of the scan.
        shape: spatial shape of the volume (indices are rounded and clipped into it).
        score_threshold: smallest score kept. Default 0.5.
        limit: most entries returned (the pool size). Default 20.
        margin_mm: extra distance beyond a finding's radius that still counts as a hit. Default 0.

    Returns:
        Up to ``limit`` ``((i, j, k), score)`` false positives, hardest first.
    """
    index = np.asarray(index, dtype=float).reshape(-1, 3)
    score = np.asarray(score, dtype=float).reshape(-1)
    keep = (score >= score_threshold) & false_positive_mask(world, nodules, margin_mm)
    vox = np.clip(np.rint(index[keep]).astype(int), 0, np.asarray(shape, dtype=int) - 1)
    return _sorted(zip(map(tuple, vox.tolist()), score[keep].tolist()))[: int(limit)]


def merge_mined(gathered: Sequence[Sequence[tuple[str, Sequence[Entry]]]]) -> list[tuple[str, list[Entry]]]:
    """Deterministic merge of per-rank mining results ``[[(seriesuid, entries), ...] per rank]``.

    Scans are sorted by uid and a scan mined by several ranks gets the union of its entries, hardest first, so every
    rank that applies the result ends with the same pool.
    """
    by_uid: dict[str, list[Entry]] = {}
    for rank_result in gathered:
        for uid, entries in rank_result:
            by_uid.setdefault(str(uid), []).extend(entries)
    return [(uid, _sorted(set(_sorted(by_uid[uid])))) for uid in sorted(by_uid)]
