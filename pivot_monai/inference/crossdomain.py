"""Cross-domain summary of `pivot evaluate` runs: CPM with CIs, FP/scan at 85/90 % sensitivity and per-category
sensitivities, one block per data domain, so that no single test split can flatter a model.

:func:`domain_summary` reads what ``pivot evaluate`` wrote (``candidates.csv``, ``metrics.json``) and the truth of
the evaluated folder (its annotations, and for synthetic data ``synthetic_findings.json`` with each nodule's type
and location), recomputes the LUNA16 FROC with a scan-level bootstrap and adds the category table of
:mod:`pivot_monai.metrics.categories`. :func:`format_domain_summaries` prints several side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pivot_monai.inference.evaluate import EvalCase, discover_cases
from pivot_monai.metrics.categories import (
    category_sensitivities,
    format_category_table,
    fp_per_scan_at_sensitivity,
)
from pivot_monai.metrics.froc import compute_froc, read_submission_csv

__all__ = ["domain_summary", "format_domain_summaries", "nodule_categories"]

_FINDINGS = "synthetic_findings.json"
_TYPE_NAMES = {"ground-glass": "GGO"}


def _findings_file(cases: list[EvalCase], data_dir: Path) -> Path | None:
    """``synthetic_findings.json`` of the raw dataset behind ``data_dir`` (itself, or the scans' LUNA16 root)."""
    candidates = [data_dir / _FINDINGS]
    if cases:
        candidates += [p / _FINDINGS for p in Path(cases[0].scan).resolve().parents[:3]]
    return next((p for p in candidates if p.exists()), None)


def nodule_categories(cases: list[EvalCase], data_dir: str | Path) -> dict[tuple[str, int], dict[str, str]]:
    """``{(seriesuid, nodule_index): {"type": ..., "location": ...}}`` for synthetic data, matched by position.

    Real datasets carry no such labels: the result is then empty and only size bins are reported.
    """
    path = _findings_file(cases, Path(data_dir))
    if path is None:
        return {}
    by_uid = {s["uid"]: s["findings"] for s in json.loads(path.read_text())}
    out: dict[tuple[str, int], dict[str, str]] = {}
    for case in cases:
        findings = [f for f in by_uid.get(case.seriesuid, []) if not f["excluded"]]
        for index, nodule in enumerate(case.nodules):
            near = [f for f in findings if np.allclose(f["world"], nodule.world, atol=0.05)]
            if near:
                kind = str(near[0]["kind"])
                out[(case.seriesuid, index)] = {"type": _TYPE_NAMES.get(kind, kind), "location": near[0]["placement"]}
    return out


def domain_summary(eval_dir: str | Path, data_dir: str | Path, *, bootstrap: int = 1000) -> dict[str, Any]:
    """Summarise one ``pivot evaluate`` output folder against the truth of ``data_dir``.

    Args:
        eval_dir: the ``--output-dir`` of ``pivot evaluate`` (``candidates.csv``, ``metrics.json``).
        data_dir: the evaluated ``--data-dir``.
        bootstrap: resamples for the CPM and category intervals. Defaults to 1000.

    Returns:
        ``cpm``, ``cpm_ci``, ``sensitivities`` (LUNA16's seven), ``fp_per_scan_at_85``/``_90``, ``size_mae_mm``,
        ``malignancy_auc``, ``n_scans``, ``n_nodules``, ``n_false_positives`` and ``categories`` (rows of
        :func:`~pivot_monai.metrics.categories.category_sensitivities` at 2 FP/scan).
    """
    eval_dir = Path(eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    cases = discover_cases(data_dir)
    candidates = read_submission_csv(eval_dir / "candidates.csv")
    failed = {str(f.get("seriesuid")) for f in metrics.get("failed") or [] if isinstance(f, Mapping)}
    uids = [c.seriesuid for c in cases if c.seriesuid not in failed]  # scans without candidates count too
    froc = compute_froc(
        {u: candidates[u] for u in uids if u in candidates},
        {c.seriesuid: c.nodules for c in cases},
        uids,
        {c.seriesuid: c.excluded for c in cases},
        bootstrap=bootstrap,
    )
    ci = None if froc.ci is None else [float(froc.ci["cpm_lower"]), float(froc.ci["cpm_upper"])]
    return {
        "cpm": float(froc.cpm),
        "cpm_ci": ci,
        "sensitivities": {f"{r:g}": float(s) for r, s in zip(froc.fp_rates, froc.sensitivities)},
        "fp_per_scan_at_85": fp_per_scan_at_sensitivity(froc, 0.85),
        "fp_per_scan_at_90": fp_per_scan_at_sensitivity(froc, 0.90),
        "size_mae_mm": metrics.get("size_mae_mm"),
        "malignancy_auc": metrics.get("malignancy_auc"),
        "n_scans": froc.n_scans,
        "n_nodules": froc.n_nodules,
        "n_false_positives": froc.n_false_positives,
        "categories": category_sensitivities(froc, nodule_categories(cases, data_dir), bootstrap=bootstrap),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else "never"
    return f"{value:.{digits}f}"


def format_domain_summaries(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Text block per domain: the headline line, the seven sensitivities and the category table."""
    blocks = []
    for name, s in summaries.items():
        ci = "" if not s.get("cpm_ci") else f" (95% CI {s['cpm_ci'][0]:.3f}-{s['cpm_ci'][1]:.3f})"
        head = (
            f"[{name}] CPM {_fmt(s['cpm'])}{ci}; {s['n_nodules']} nodules in {s['n_scans']} scans; "
            f"FP/scan at 85 % sens {_fmt(s['fp_per_scan_at_85'], 2)}, at 90 % {_fmt(s['fp_per_scan_at_90'], 2)}; "
            f"size MAE {_fmt(s['size_mae_mm'], 2)} mm; malignancy AUC {_fmt(s['malignancy_auc'], 2)}"
        )
        sens = "sensitivity at " + ", ".join(f"{k} FP/scan {v:.2f}" for k, v in s["sensitivities"].items())
        blocks.append("\n".join([head, sens, format_category_table(s["categories"], "per category at 2 FP/scan:")]))
    return "\n\n".join(blocks)
