"""Detection quality on a held-out synthetic test set: CPM, the 7 LUNA16 sensitivities, size MAE, malignancy AUC.

The test scans are generated from seed ``--seed`` (default 1000; ``make demo`` trains on seed 0, and no benchmark
trains on a seed >= 1000) and evaluated from their raw ``.mhd`` files by
:func:`pivot_monai.inference.evaluate.evaluate` (the full inference pipeline, then LUNA16 FROC with a scan-level
bootstrap CI). The model is ``--checkpoint`` (default ``bundle/models/model.pt`` from ``make demo``), or one trained
first with ``--train-profile``:

* ``demo``: ``make demo``'s training (120 small scans of seed 0, split 70/15/15, ``demo.yaml``: 22 epochs, heads at
  output stride 2, mining on); see benchmarks/README.md for its measured time;
* ``full``: a longer profile (120 scans, ``demo.yaml`` with 60 epochs and validation every 10); an estimate is
  logged before it starts; measured 26.1-34.9 min on an idle 2-core VM. Opt-in: ``make bench`` never trains.

Without a trained model, seeded random weights are evaluated and the numbers are meaningless (a warning says so).

Usage::

    python -m benchmarks.bench_quality [--checkpoint bundle/models/model.pt] [--scans 60]
    python -m benchmarks.bench_quality --train-profile demo
    python -m benchmarks.bench_quality --quick       # 2 small scans at 4 mm, 32^3 windows, no bootstrap
    python -m benchmarks.bench_quality --size fullsize --scans 20 --seed 1001 --antialias area

The small scans (2.0-2.6 mm) are never downsampled to the demo's 2 mm, so ``data.antialias`` matters on fullsize
scans only (0.6-1.0 mm in-plane).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIG_DIR,
    DEMO_CONFIG,
    QUICK_OVERRIDES,
    RESULTS_DIR,
    WORK_DIR,
    Row,
    ensure_raw_dataset,
    ensure_training_split,
    format_table,
    load_profile,
    resolve_checkpoint,
    setup_logging,
    write_results,
)

__all__ = ["TRAIN_PROFILES", "main", "train_profile"]

logger = logging.getLogger(__name__)

NAME = "quality"
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "demo": {"scans": 120, "overrides": {}},
    "full": {"scans": 120, "overrides": {"training#epochs": 60, "validation#interval": 10}},
}
METRICS = ("cpm", "size_mae_mm", "malignancy_auc", "detection_sensitivity", "fp_per_scan")


def _estimate_seconds(epochs: int, train_scans: int, samples_per_volume: int) -> float | None:
    """Training time from the last ``bench_training`` result (patches/s of the cached loop), if there is one."""
    path = RESULTS_DIR / "training.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    rate = next((r["value"] for r in rows if r["metric"].startswith("patches/s")), None)
    return epochs * train_scans * samples_per_volume / rate if rate else None


def train_profile(name: str, config: Path) -> tuple[Path, float]:
    """Generate, preprocess and split the profile's training data, train with the bundle; (checkpoint, seconds)."""
    from monai.bundle import ConfigWorkflow

    profile = TRAIN_PROFILES[name]
    processed, splits = ensure_training_split(0, profile["scans"], config)
    sections = load_profile(config)
    epochs = int(profile["overrides"].get("training#epochs", sections["training"]["epochs"]))
    estimate = _estimate_seconds(epochs, len(splits["training"]), int(sections["data"]["samples_per_volume"]))
    logger.info(
        "training profile %s: %d train scans, %d epochs; estimated %s",
        name,
        len(splits["training"]),
        epochs,
        f"{estimate / 60:.0f} min (from results/training.json)" if estimate else "unknown (run bench_training)",
    )
    root = WORK_DIR / "quality_train" / name
    workflow = ConfigWorkflow(
        config_file=[str(CONFIG_DIR / "train.yaml"), str(config)],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(root),
        dataset_dir=str(processed),
        **profile["overrides"],
    )
    start = time.perf_counter()
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    seconds = time.perf_counter() - start
    logger.info("training profile %s took %.1f min", name, seconds / 60)
    return root / "models" / "model.pt", seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 small scans at 4 mm, 32^3 windows, no bootstrap")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt (default bundle/models/model.pt)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="profile layered over train.yaml")
    p.add_argument("--train-profile", choices=("none", *TRAIN_PROFILES), default="none", help="train a model first")
    p.add_argument("--scans", type=int, default=60, help="held-out test scans (60 hold 92 nodules)")
    p.add_argument("--size", choices=("small", "fullsize"), default="small", help="test scan size preset")
    p.add_argument("--seed", type=int, default=1000, help="test-set seed (>= 1000: never trained on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the CIs (0 disables)")
    p.add_argument("--threshold", type=float, default=0.5, help="operating probability of the per-nodule metrics")
    p.add_argument(
        "--antialias", choices=("area", "gaussian"), default=None, help="data.antialias for the test scans (fullsize)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/quality.json`` and return the table rows.

    ``--train-profile``, ``--size fullsize``, ``--antialias`` and another ``--seed`` each add to the name
    (``quality_<profile>_<size>_<antialias>_seed<N>.json``), so ``make bench`` never overwrites those results.
    """
    from pivot_monai.inference.evaluate import evaluate

    args = parse_args(argv)
    scans, size, bootstrap = (2, "small", 0) if args.quick else (args.scans, args.size, args.bootstrap)
    overrides = {
        **(QUICK_OVERRIDES if args.quick else {}),
        **({"data#antialias": args.antialias} if args.antialias else {}),
    }
    sections = load_profile(args.config, overrides)
    train_seconds = None
    if args.train_profile != "none":
        checkpoint, train_seconds = train_profile(args.train_profile, args.config)
        trained = True
    else:
        checkpoint, trained = resolve_checkpoint(args.checkpoint, sections["model"])
    test_dir = ensure_raw_dataset(size, scans, args.seed)
    start = time.perf_counter()
    metrics = evaluate(
        checkpoint,
        test_dir,
        WORK_DIR / "quality_eval",
        data=sections["data"],
        model_cfg=sections["model"],
        inference=sections["inference"],
        device_cfg=sections["device"],  # as `pivot evaluate`: bf16 autocast on a CPU with native bf16
        bootstrap=bootstrap,
        threshold=args.threshold,
    )
    eval_seconds = time.perf_counter() - start
    rows = _rows(metrics, trained, args.quick)
    details = {"metrics": metrics, "eval_seconds": eval_seconds, "train_seconds": train_seconds}
    settings = {
        "quick": args.quick,
        "checkpoint": str(checkpoint),
        "trained": trained,
        "train_profile": args.train_profile,
        "config": str(args.config),
        "overrides": overrides,
        "test_set": {"size": size, "scans": scans, "seed": args.seed, "dir": str(test_dir)},
        "bootstrap": bootstrap,
        "threshold": args.threshold,
    }
    # a trained profile, another test-set size or an antialias override keeps its own file, so `make bench` (the demo
    # model on small scans) does not overwrite it
    parts = [args.train_profile if args.train_profile != "none" else "", size if size != "small" else ""]
    parts += [args.antialias or "", f"seed{args.seed}" if args.seed != 1000 and not args.quick else ""]
    suffix = "".join(f"_{p}" for p in parts if p)
    write_results(f"{NAME}{suffix}", rows, details, settings)
    return rows


def _rows(metrics: Mapping[str, Any], trained: bool, quick: bool) -> list[Row]:
    tag = " [quick, 4 mm]" if quick else ""
    tag += "" if trained else " [random weights]"
    names = ["cpm", *(k for k in metrics if k.startswith("sensitivity@")), *METRICS[1:]]
    rows = [Row(NAME, f"{k}{tag}", metrics.get(k)) for k in names]
    if metrics.get("cpm_ci"):
        rows[0].note = f"95% CI {metrics['cpm_ci']}"
    rows += [Row(NAME, "test scans", metrics.get("n_scans")), Row(NAME, "test nodules", metrics.get("n_nodules"))]
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
