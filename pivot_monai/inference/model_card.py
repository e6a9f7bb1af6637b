"""The bundle's measured figures: a model's evaluation metrics written into ``bundle/configs/metadata.json``.

``metadata.json``'s ``eval_metrics`` is the model-zoo place for what a bundle's model achieves. After ``make demo``
evaluates the demo model, :func:`write_bundle_metrics` replaces it with the figures of each evaluated domain, so the
file never claims a number nobody measured::

    write_bundle_metrics("bundle/configs/metadata.json", {"test": "results/eval/metrics.json",
                                                          "heldout": "results/eval_heldout/metrics.json"})

gives ``"eval_metrics": {"test": {"cpm": 0.7429, "cpm_95ci": [0.61, 0.86], "sensitivity@0.125": 0.6667, ...,
"n_scans": 14, "n_nodules": 30}, "heldout": {...}}`` (4 decimals).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pivot_monai.files import atomic_write_text
from pivot_monai.metrics import LUNA16_FP_RATES

__all__ = ["EVAL_METRIC_KEYS", "bundle_eval_metrics", "write_bundle_metrics"]

logger = logging.getLogger(__name__)

EVAL_METRIC_KEYS = ("cpm", *(f"sensitivity@{r:g}" for r in LUNA16_FP_RATES), "detection_sensitivity", "fp_per_scan",
                    "detection_dice", "size_mae_mm", "malignancy_auc", "n_scans", "n_nodules")  # fmt: skip
"""The ``metrics.json`` entries copied into ``eval_metrics`` (those present), with ``cpm_ci`` as ``cpm_95ci``."""


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def bundle_eval_metrics(metrics: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The ``eval_metrics`` entry of one domain from its ``pivot evaluate`` metrics (mapping or ``metrics.json``).

    Raises:
        FileNotFoundError: a ``metrics.json`` path that does not exist.
        ValueError: metrics without a ``cpm``.
    """
    if not isinstance(metrics, Mapping):
        path = Path(metrics)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: metrics.json not found (written by pivot evaluate)")
        metrics = json.loads(path.read_text())
    if metrics.get("cpm") is None:
        raise ValueError(f"evaluation metrics must hold a 'cpm' (pivot evaluate's metrics.json), got {sorted(metrics)}")
    out = {k: _round(metrics[k]) for k in EVAL_METRIC_KEYS if metrics.get(k) is not None}
    if metrics.get("cpm_ci") is not None:
        out["cpm_95ci"] = _round(list(metrics["cpm_ci"]))
    return out


def write_bundle_metrics(
    metadata_path: str | Path, metrics_by_domain: Mapping[str, Mapping[str, Any] | str | Path]
) -> dict[str, Any]:
    """Replace ``eval_metrics`` of a bundle's ``metadata.json`` with the measured metrics of each domain.

    Args:
        metadata_path: the bundle's ``metadata.json`` (rewritten atomically, other entries unchanged).
        metrics_by_domain: ``{domain name: metrics}``, each the mapping :func:`~pivot_monai.inference.evaluate.
            evaluate` returns or the path of its ``metrics.json``, e.g. ``{"test": ..., "heldout": ...}``.

    Returns:
        The new ``eval_metrics``.

    Raises:
        FileNotFoundError: ``metadata_path`` or a ``metrics.json`` does not exist.
        ValueError: no domain given, or a domain's metrics without a ``cpm``.
    """
    path = Path(metadata_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundle metadata.json not found")
    if not metrics_by_domain:
        raise ValueError("write_bundle_metrics: give the metrics of at least one domain")
    metadata = json.loads(path.read_text())
    metadata["eval_metrics"] = {str(name): bundle_eval_metrics(m) for name, m in metrics_by_domain.items()}
    atomic_write_text(path, json.dumps(metadata, indent=4) + "\n")
    logger.info(
        "%s: eval_metrics %s",
        path,
        ", ".join(f"{name} CPM {m['cpm']:.4f}" for name, m in metadata["eval_metrics"].items()),
    )
    return metadata["eval_metrics"]
