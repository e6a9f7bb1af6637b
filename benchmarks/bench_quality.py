"""Detection quality on two domains: CPM, the 7 LUNA16 sensitivities, FP/scan at 85/90 % sensitivity, per-category
sensitivities, size MAE and malignancy AUC, each with bootstrap CIs.

Two test sets, both never trained on: ``--scans`` scans of the generator's ``train`` domain (seed ``--seed``, default
1000; ``make demo`` trains on seed 0) and ``--heldout-scans`` fullsize scans of the disjoint ``heldout`` domain
(:mod:`pivot_monai.data.synthetic.domains`: other noise, kernels, vessel density, body habitus, nodule attenuation).
Both are evaluated from their raw ``.mhd`` files by :func:`pivot_monai.inference.evaluate.evaluate` (the full
inference pipeline, then LUNA16 FROC with a scan-level bootstrap CI) and summarised by
:func:`pivot_monai.inference.crossdomain.domain_summary`. The model is ``--checkpoint`` (default
``bundle/models/model.pt`` from ``make demo``), or one trained first with ``--train-profile``:

* ``demo``: ``make demo``'s training profile (``demo.yaml``: 22 epochs, heads at output stride 2, mining on) on
  the benchmark's own small training split; see benchmarks/README.md for its measured time;
* ``full``: the CPU long profile (``bundle/configs/cpu_long.yaml`` over ``--config``: 72 epochs, mining every 9, a
  checkpoint every 12; see benchmarks/README.md for its measured time); an estimate is logged before it starts.
  Opt-in: ``make bench`` never trains.

Without a trained model, seeded random weights are evaluated and the numbers are meaningless (a warning says so).

Usage::

    python -m benchmarks.bench_quality [--checkpoint bundle/models/model.pt] [--scans 40] [--heldout-scans 20]
    python -m benchmarks.bench_quality --train-profile demo
    python -m benchmarks.bench_quality --quick       # 2 small scans per domain at 4 mm, 32^3 windows, no bootstrap
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
# each profile: training scans generated, and the bundle configs layered over train.yaml and --config
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "demo": {"scans": 120, "layers": ()},
    # the CPU long profile of benchmarks/README.md (time to CPM)
    "full": {"scans": 120, "layers": (CONFIG_DIR / "cpu_long.yaml",)},
}


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
    from monai.bundle import ConfigParser, ConfigWorkflow

    profile = TRAIN_PROFILES[name]
    processed, splits = ensure_training_split(0, profile["scans"], config)
    files = [CONFIG_DIR / "train.yaml", Path(config), *profile["layers"]]
    merged = ConfigParser.load_config_files([str(f) for f in files])
    epochs = int(merged["training"]["epochs"])
    estimate = _estimate_seconds(epochs, len(splits["training"]), int(merged["data"]["samples_per_volume"]))
    logger.info(
        "training profile %s: %d train scans, %d epochs; estimated %s",
        name,
        len(splits["training"]),
        epochs,
        f"{estimate / 60:.0f} min (from results/training.json)" if estimate else "unknown (run bench_training)",
    )
    root = WORK_DIR / "quality_train" / name
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(root),
        dataset_dir=str(processed),
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
    p.add_argument("--quick", action="store_true", help="2 small scans per domain at 4 mm, 32^3 windows, no bootstrap")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt (default bundle/models/model.pt)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="profile layered over train.yaml")
    p.add_argument("--train-profile", choices=("none", *TRAIN_PROFILES), default="none", help="train a model first")
    p.add_argument("--scans", type=int, default=40, help="train-domain test scans")
    p.add_argument("--size", choices=("small", "medium", "fullsize"), default="medium", help="train-domain test size")
    p.add_argument("--seed", type=int, default=1000, help="train-domain test seed (>= 1000: never trained on)")
    p.add_argument("--heldout-scans", type=int, default=20, help="fullsize held-out-domain scans")
    p.add_argument("--heldout-seed", type=int, default=9000, help="held-out-domain seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the CIs (0 disables)")
    p.add_argument("--threshold", type=float, default=0.5, help="operating probability of the per-nodule metrics")
    p.add_argument("--antialias", choices=("area", "gaussian"), default=None, help="data.antialias for the test scans")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Evaluate on both domains, write ``benchmarks/results/quality*.json`` and return the table rows.

    ``--train-profile``, ``--antialias`` and other seeds each add to the name, so ``make bench`` never overwrites
    those results.
    """
    from pivot_monai.inference.crossdomain import domain_summary, format_domain_summaries
    from pivot_monai.inference.evaluate import evaluate
    from pivot_monai.inference.settings import InferenceSettings

    args = parse_args(argv)
    if args.quick:
        plan = {"train domain": ("small", 2, args.seed, "train"), "held-out domain": ("small", 2, 9000, "heldout")}
        bootstrap = 0
    else:
        plan = {
            "train domain": (args.size, args.scans, args.seed, "train"),
            "held-out domain": ("fullsize", args.heldout_scans, args.heldout_seed, "heldout"),
        }
        bootstrap = args.bootstrap
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
        checkpoint, trained = resolve_checkpoint(args.checkpoint, sections["model"], sections)
    settings = InferenceSettings.from_config(sections)
    summaries, metrics, seconds = {}, {}, {}
    for name, (size, scans, seed, domain) in plan.items():
        data_dir = ensure_raw_dataset(size, scans, seed, domain)
        out = WORK_DIR / "quality_eval" / domain
        start = time.perf_counter()
        metrics[name] = evaluate(checkpoint, data_dir, out, settings, bootstrap=bootstrap, threshold=args.threshold)
        seconds[name] = time.perf_counter() - start
        summaries[name] = domain_summary(out, data_dir, bootstrap=bootstrap)
    demo_profile = Path(args.config).resolve() == DEMO_CONFIG.resolve()
    rows = _rows(summaries, trained, args.quick, demo_profile)
    details = {"summaries": summaries, "metrics": metrics, "eval_seconds": seconds, "train_seconds": train_seconds}
    run_settings = {
        "quick": args.quick,
        "checkpoint": str(checkpoint),
        "trained": trained,
        "train_profile": args.train_profile,
        "config": str(args.config),
        "overrides": overrides,
        "test_sets": {k: dict(zip(("size", "scans", "seed", "domain"), v)) for k, v in plan.items()},
        "bootstrap": bootstrap,
        "threshold": args.threshold,
    }
    parts = [args.train_profile if args.train_profile != "none" else "", args.antialias or ""]
    parts += [f"seed{args.seed}" if args.seed != 1000 and not args.quick else ""]
    suffix = "".join(f"_{p}" for p in parts if p)
    write_results(f"{NAME}{suffix}", rows, details, run_settings)
    logger.info("cross-domain summary\n%s", format_domain_summaries(summaries))
    return rows


def _targets(domain: str, demo_profile: bool) -> dict[str, str]:
    """The quality targets (held-out domain only): the demo profile's CPM, or the default profile's full set."""
    if domain != "held-out domain":
        return {}
    if demo_profile:
        return {"cpm": ">= 0.85"}
    return {"cpm": ">= 0.9", "fp85": "<= 2", "<6 mm": ">= 0.85", "GGO": ">= 0.8"}


def _rows(summaries: Mapping[str, Mapping[str, Any]], trained: bool, quick: bool, demo_profile: bool) -> list[Row]:
    tag = " [quick, 4 mm]" if quick else ""
    tag += "" if trained else " [random weights]"
    rows: list[Row] = []
    for domain, s in summaries.items():
        targets = {} if quick else _targets(domain, demo_profile)
        head = Row(NAME, f"{domain}: cpm{tag}", s["cpm"], target=targets.get("cpm", ""))
        if s.get("cpm_ci"):
            head.note = f"95% CI {s['cpm_ci'][0]:.3f}-{s['cpm_ci'][1]:.3f}"
        rows.append(head)
        rows += [Row(NAME, f"{domain}: sensitivity@{k}", v) for k, v in s["sensitivities"].items()]
        rows += [
            Row(NAME, f"{domain}: FP/scan at 85% sensitivity", s["fp_per_scan_at_85"], target=targets.get("fp85", "")),
            Row(NAME, f"{domain}: FP/scan at 90% sensitivity", s["fp_per_scan_at_90"]),
            Row(NAME, f"{domain}: size MAE (mm)", s["size_mae_mm"]),
            Row(NAME, f"{domain}: malignancy AUC", s["malignancy_auc"]),
            Row(NAME, f"{domain}: scans / nodules", f"{s['n_scans']} / {s['n_nodules']}"),
        ]
        for c in s["categories"]:
            metric = f"{domain}: sens@2FP {c['group']} {c['category']} (n={c['n']})"
            row = Row(NAME, metric, c["sensitivity"], target=targets.get(c["category"], ""))
            if c["ci"]:
                row.note = f"95% CI {c['ci'][0]:.2f}-{c['ci'][1]:.2f}"
            rows.append(row)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
