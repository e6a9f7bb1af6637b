"""Nodule metadata as fixed-size tables, so they batch, pad and all-gather like any tensor.

A *nodule table* is ``(M, 7)`` float32 with one row per finding, zero-padded to ``M`` rows:
``[x_mm, y_mm, z_mm, diameter_mm, malignant (0/1, -1 unknown), kind (1 nodule, 2 excluded), label_id]``.
A *candidate table* is ``(K, 6)``: ``[x_mm, y_mm, z_mm, probability, diameter_mm, malignancy_probability]``,
padded with rows whose probability is -1.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "CANDIDATE_COLUMNS",
    "EXCLUDED",
    "MAX_NODULES",
    "NODULE",
    "NODULE_COLUMNS",
    "LoadNoduleMetad",
    "nodule_table",
]

NODULE_COLUMNS = ("x", "y", "z", "diameter_mm", "malignant", "kind", "label_id")
CANDIDATE_COLUMNS = ("x", "y", "z", "probability", "diameter_mm", "malignancy_probability")
NODULE, EXCLUDED = 1.0, 2.0
MAX_NODULES = 64


def nodule_table(meta: Mapping[str, Any], max_rows: int = MAX_NODULES) -> np.ndarray:
    """``(max_rows, 7)`` table of a scan's nodules and excluded findings from its ``meta.json`` content."""
    rows = []
    for kind, key in ((NODULE, "nodules"), (EXCLUDED, "excluded")):
        for n in meta.get(key, []):
            malignant = n.get("malignant")
            rows.append(
                [
                    *n["world"],
                    n["diameter_mm"],
                    -1.0 if malignant is None else float(malignant),
                    kind,
                    float(n.get("label_id", 0)),
                ]
            )
    if len(rows) > max_rows:
        raise ValueError(f"{meta.get('seriesuid')}: {len(rows)} findings exceed the table size {max_rows}")
    table = np.zeros((max_rows, len(NODULE_COLUMNS)), dtype=np.float32)
    if rows:
        table[: len(rows)] = np.asarray(rows, dtype=np.float32)
    return table


class LoadNoduleMetad(MapTransform):
    """Read ``meta.json`` (path under ``keys``) and add what training and validation need.

    Adds ``"nodules"`` (the :func:`nodule_table`), ``"index_to_world"`` ((4, 4) float64 matrix of the processed
    image), ``"seriesuid"`` and, for target generation, ``"nodule_diameters"`` / ``"nodule_malignancy"`` indexed by
    label id (entry 0 unused).
    """

    def __init__(
        self, keys: KeysCollection = "meta", max_nodules: int = MAX_NODULES, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_nodules = max_nodules

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from pivot_monai.data.geometry import Geometry

        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            meta = json.loads(path.read_text())
            d["nodules"] = torch.as_tensor(nodule_table(meta, self.max_nodules))
            d["index_to_world"] = torch.as_tensor(Geometry.from_dict(meta["processed_geometry"]).index_to_world_matrix)
            d["seriesuid"] = meta["seriesuid"]
            n = len(meta.get("nodules", []))
            diam = np.zeros(self.max_nodules + 1, dtype=np.float32)
            malig = np.full(self.max_nodules + 1, -1.0, dtype=np.float32)
            for rec in meta.get("nodules", []):
                i = int(rec.get("label_id", 0))
                if 0 < i <= self.max_nodules:
                    diam[i] = rec["diameter_mm"]
                    malig[i] = -1.0 if rec.get("malignant") is None else float(rec["malignant"])
            d["nodule_diameters"], d["nodule_malignancy"] = diam, malig
            d["num_nodules"] = n
        return d
