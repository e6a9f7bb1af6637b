"""Preprocessing cost: seconds and peak RSS per fullsize scan, one fresh process per scan.

Each case is :func:`pivot_monai.data.preprocess.preprocess_scan` (read ``.mhd``, lung crop, resample, HU window,
nodule label, write NIfTI + ``meta.json``) on one synthetic fullsize scan (512 x 512, 0.6-1.0 mm in-plane), run in
a fresh process so its peak RSS is that scan's alone. Profiles (``train.yaml`` at 1.5 mm and the ``demo.yaml`` CPU
profile at 2 mm) alternate scan by scan, ``--repeats`` rounds; medians are reported.

Usage::

    python -m benchmarks.bench_preprocess            # 3 fullsize scans x 3 rounds, both profiles
    python -m benchmarks.bench_preprocess --quick    # 1 small scan, demo profile, 1 round
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIG_DIR,
    DEMO_CONFIG,
    WORK_DIR,
    CaseResult,
    Row,
    alternate,
    ensure_raw_dataset,
    format_table,
    median,
    run_isolated,
    setup_logging,
    write_results,
)
from pivot_monai.config import load_section
from pivot_monai.data.preprocess import PreprocessConfig, preprocess_scan
from pivot_monai.data.raw_dataset import discover_raw_dataset

__all__ = ["main", "preprocess_one"]

logger = logging.getLogger(__name__)

NAME = "preprocess"
PROFILES = {"train": CONFIG_DIR / "train.yaml", "demo": DEMO_CONFIG}


def preprocess_one(
    scan: str, seriesuid: str, nodules: list, excluded: list, output_dir: str, cfg: PreprocessConfig
) -> dict[str, Any]:
    """One case (runs in its own process): :func:`~pivot_monai.data.preprocess.preprocess_scan` of one scan."""
    meta = preprocess_scan(scan, seriesuid, nodules, excluded, output_dir, cfg)
    return {"processed_size": meta["processed_geometry"]["size"], "raw_size": meta["raw_geometry"]["size"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 small scan, demo profile, 1 round (smoke test)")
    p.add_argument("--scans", type=int, default=3, help="fullsize scans (seed --seed)")
    p.add_argument("--seed", type=int, default=1000, help="synthetic dataset seed")
    p.add_argument("--repeats", type=int, default=3, help="rounds per scan and profile")
    p.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["train", "demo"])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/preprocess.json`` and return the table rows."""
    args = parse_args(argv)
    size, scans, repeats, profiles = "fullsize", args.scans, args.repeats, list(args.profiles)
    if args.quick:
        size, scans, repeats, profiles = "small", 1, 1, ["demo"]
    raw_dir = ensure_raw_dataset(size, scans, args.seed)
    raw = discover_raw_dataset(raw_dir)
    uids = raw.scans
    cfgs = {p: PreprocessConfig.from_data_section(load_section("data", PROFILES[p])) for p in profiles}
    out_root = WORK_DIR / f"processed_bench_{size}"

    def case(uid: str, profile: str):
        def run() -> CaseResult:
            nodules, excluded = raw.annotations.get(uid, []), raw.excluded.get(uid, [])
            out = str(out_root / profile)
            return run_isolated(preprocess_one, str(uids[uid]), uid, nodules, excluded, out, cfgs[profile])

        return run

    per_scan: dict[str, dict[str, list[CaseResult]]] = {}
    for uid in uids:
        per_scan[uid] = alternate({p: case(uid, p) for p in profiles}, repeats)
        for p, results in per_scan[uid].items():
            logger.info(
                "%s %s: %.2f s, %.0f MB peak (median of %d)",
                uid[-12:],
                p,
                median([r.seconds for r in results]),
                median([r.peak_rss_mb for r in results]),
                len(results),
            )
    rows: list[Row] = []
    details: dict[str, Any] = {"scans": {}}
    for p in profiles:
        secs = [median([r.seconds for r in per_scan[u][p]]) for u in uids]
        peaks = [max(r.peak_rss_mb for r in per_scan[u][p]) for u in uids]
        rows.append(Row(NAME, f"{p} profile: s/{size} scan (mean of per-scan medians)", sum(secs) / len(secs)))
        rows.append(Row(NAME, f"{p} profile: peak RSS MB (max over scans)", max(peaks)))
    for u in uids:
        details["scans"][u] = {
            p: {
                "seconds": [r.seconds for r in per_scan[u][p]],
                "peak_rss_mb": [r.peak_rss_mb for r in per_scan[u][p]],
                **per_scan[u][p][0].value,
                "config": cfgs[p].to_dict(),
            }
            for p in profiles
        }
    settings = {"quick": args.quick, "size": size, "scans": scans, "seed": args.seed, "repeats": repeats}
    settings["profiles"] = {p: str(Path(PROFILES[p]).name) for p in profiles}
    write_results(NAME, rows, details, settings)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
