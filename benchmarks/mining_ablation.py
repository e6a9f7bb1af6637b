"""Hard-negative mining ablation: train the bundle with mining off and on, same budget, and compare FROC.

Both runs train the same network from the same seed for the same epochs and iterations on the same synthetic
dataset. "On" switches ``training.hard_negative_mining`` on (hard-negative crops from the mined pool, plus the loss's
hard-negative selection); "off" keeps random negative crops at the same positive share (``data.pos_neg_ratio`` set
to ``[1, neg_pos_ratio]``), so the crops differ only in where the negatives are centred. Each final model is
evaluated on the test split: CPM, sensitivity at the LUNA16 FP rates, and FP/scan at equal sensitivity (the highest
sensitivity both runs reach, or ``--sensitivity``). Mining rounds cost extra inference time, reported as wall time.

Needs a ``train.yaml`` wired for the training handlers (``--config``). Usage::

    python benchmarks/mining_ablation.py --scans 24 --epochs 30 --output benchmarks/results/mining_ablation.json
    python benchmarks/mining_ablation.py --scans 5 --epochs 1 --patch 16 --base-filters 4 --depth 2  # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fps_at_sensitivity", "main", "make_dataset", "run_arm"]

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def make_dataset(workdir: Path, scans: int, seed: int, spacing: float) -> Path:
    """Synthetic raw scans -> processed dataset split into train/val/test; returns the processed root."""
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.data.raw_dataset import preprocess_dataset
    from pivot_monai.data.splits import create_splits
    from pivot_monai.data.synthetic import generate_dataset

    raw, processed = workdir / "raw", workdir / "processed"
    generate_dataset(raw, scans, seed=seed, size="small")
    report = preprocess_dataset(raw, processed, PreprocessConfig(target_spacing=(spacing,) * 3, crop_margin_mm=4))
    if report["failed"]:
        raise RuntimeError(f"preprocessing failed for {report['failed']}")
    create_splits(processed, 0.6, 0.2, 0.2, seed=seed)
    return processed


def fps_at_sensitivity(fps: np.ndarray, sensitivity: np.ndarray, target: float) -> float:
    """Fewest FP/scan at which the FROC curve reaches ``target`` sensitivity (``inf`` if it never does)."""
    reached = np.asarray(sensitivity) >= target - 1e-9
    return float(np.min(np.asarray(fps)[reached])) if reached.any() else float("inf")


def _overrides(args: argparse.Namespace, processed: Path, root: Path, mining: bool) -> dict[str, Any]:
    patch = [args.patch] * 3
    return {
        "dataset_dir": str(processed), "bundle_root": str(root), "device#type": args.device,
        "training#epochs": args.epochs, "training#seed": args.seed, "training#batch_size": args.batch_size,
        "training#early_stopping#enabled": False, "training#scheduler#warmup_epochs": min(2, args.epochs - 1),
        "training#hard_negative_mining#enabled": mining, "training#hard_negative_mining#interval": args.interval,
        "training#hard_negative_mining#neg_pos_ratio": args.neg_pos_ratio,
        "training#hard_negative_mining#score_threshold": args.mine_threshold,
        "data#pos_neg_ratio": [1, args.neg_pos_ratio], "data#patch_size": patch, "data#crop_margin": args.patch // 4,
        "data#samples_per_volume": args.samples, "data#num_workers": 0, "data#cache_rate": 1.0,
        "model#base_filters": args.base_filters, "model#depth": args.depth,
        "validation#interval": args.epochs + 1, "checkpointing#save_interval": 0, "checkpointing#save_best": False,
        "logging#tensorboard": False,
    }  # fmt: skip


def run_arm(args: argparse.Namespace, processed: Path, workdir: Path, mining: bool) -> dict[str, Any]:
    """Train one arm and evaluate its final model on the test split."""
    from monai.bundle import ConfigWorkflow

    from pivot_monai.inference.evaluate import discover_cases, evaluate
    from pivot_monai.metrics.froc import compute_froc, read_submission_csv

    name = "mining_on" if mining else "mining_off"
    root = workdir / name
    wf = ConfigWorkflow(config_file=str(args.config), meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", run_id="training",
                        **_overrides(args, processed, root, mining))  # fmt: skip
    wf.initialize()
    start = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - start
    sections = {k: wf.parser.get_parsed_content(k) for k in ("data", "model", "inference")}
    pool = wf.parser.get_parsed_content("train#hard_negative_pool") if mining else None
    wf.finalize()
    out = root / "eval"
    evaluate(root / "models" / "model.pt", processed / "test", out, data=sections["data"], model_cfg=sections["model"],
             inference=sections["inference"], device=args.device, bootstrap=0)  # fmt: skip
    cases = discover_cases(processed / "test")
    uids = [c.seriesuid for c in cases]
    froc = compute_froc(read_submission_csv(out / "candidates.csv"), {c.seriesuid: c.nodules for c in cases}, uids,
                        {c.seriesuid: c.excluded for c in cases})  # fmt: skip
    return {"cpm": froc.cpm, "fp_rates": froc.fp_rates.tolist(), "sensitivities": froc.sensitivities.tolist(),
            "fps": froc.fps, "sensitivity": froc.sensitivity, "max_sensitivity": float(np.nanmax(froc.sensitivity)),
            "train_seconds": round(seconds, 1), "pool_entries": None if pool is None else len(pool),
            "n_scans": froc.n_scans, "n_nodules": froc.n_nodules}  # fmt: skip


def _check_wired(config: Path) -> None:
    if "pivot_monai.handlers.hard_negative_mining" not in config.read_text():
        raise SystemExit(f"{config} is not wired for hard-negative mining (no HardNegativeMiningHandler); pass "
                         f"--config with a train.yaml that holds the training-handler lines")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both arms and log a markdown table; returns (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "train.yaml")
    parser.add_argument("--processed", type=Path, help="existing processed dataset with train/val/test splits")
    parser.add_argument("--workdir", type=Path, help="output folder (default: a temporary folder)")
    parser.add_argument("--scans", type=int, default=24, help="synthetic scans to generate without --processed")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--interval", type=int, default=2, help="epochs between mining rounds")
    parser.add_argument("--neg-pos-ratio", type=float, default=3.0)
    parser.add_argument("--mine-threshold", type=float, default=0.3)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4, help="crops per volume")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sensitivity", type=float, help="sensitivity of the FP/scan comparison")
    parser.add_argument("--output", type=Path, help="JSON results file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_wired(args.config)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mining_ablation_"))
    processed = args.processed or make_dataset(workdir, args.scans, args.seed, args.spacing)
    arms = {"off": run_arm(args, processed, workdir, False), "on": run_arm(args, processed, workdir, True)}
    target = args.sensitivity if args.sensitivity is not None else min(a["max_sensitivity"] for a in arms.values())
    for arm in arms.values():
        arm["fps_at_sensitivity"] = fps_at_sensitivity(arm.pop("fps"), arm.pop("sensitivity"), target)
    results = {"target_sensitivity": target, "arms": arms, "settings": {k: str(v) for k, v in vars(args).items()}}
    logger.info("| mining | CPM | FP/scan at sensitivity %.3f | pool entries | train s |", target)
    logger.info("|---|---|---|---|---|")
    for name, arm in arms.items():
        logger.info("| %s | %.4f | %.3f | %s | %.1f |", name, arm["cpm"], arm["fps_at_sensitivity"],
                    arm["pool_entries"], arm["train_seconds"])  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
