"""Ablation of the custom training handlers at equal budget: validation and held-out CPM, and their time overhead.

Every arm trains the real bundle (``train.yaml`` + ``demo.yaml`` through ``monai.bundle.ConfigWorkflow``) from the
same seed, for the same epochs and iterations per epoch, on the same synthetic training split, and differs from
``base`` only in the handler it switches on:

* ``base``: the demo profile with hard-negative mining switched off (as every arm below except ``mining``);
* ``mining``: ``training.hard_negative_mining`` as the demo profile sets it (false-positive peaks mined every
  ``interval`` epochs; crops are one positive per ``neg_pos_ratio`` negatives, ``batch_hard_ratio`` of them on
  pooled peaks);
* ``curriculum``: size-based stages, nodules >= 8 mm for the first fifth of the epochs, >= 5 mm for the next fifth;
* ``progressive``: 32^3 patches two volumes a batch for the first half, then the profile's 48^3 patches;
* ``pretrained``: ``training.pretrained`` from ``--pretrained`` (a model trained on other scans, e.g. ``make
  demo``'s, seed 0), encoder frozen for the first quarter of the epochs, then unfrozen;

and, without training, ``tta``: the ``base`` model evaluated with ``inference.tta`` (8 flip passes).

Reported per arm: the final validation CPM (the bundle's ``val_froc`` on the validation split), the CPM and the 7
sensitivities on held-out scans (seed ``--test-seed``, never trained on), FP/scan at the sensitivity every arm
reaches, training seconds, seconds spent in mining rounds, and evaluation seconds (the TTA overhead).

Usage::

    python -m benchmarks.handler_ablation                          # every arm, 20 epochs each
    python -m benchmarks.handler_ablation --arms base mining --epochs 30
    python -m benchmarks.handler_ablation --quick                  # smoke test: 6 scans, 2 epochs, tiny network

Arms in separate processes (``--arms``) write ``handler_ablation_<arms>.json``; ``--merge`` prints one table of all.
The training data (``--train-seed``, default 2000) is generated, preprocessed and split once under
``benchmarks/work/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CONFIG_DIR,
    DEMO_CONFIG,
    RESULTS_DIR,
    WORK_DIR,
    Row,
    ensure_raw_dataset,
    ensure_training_split,
    format_table,
    load_profile,
    setup_logging,
    write_results,
)

__all__ = ["ARMS", "fps_at_sensitivity", "main", "run_arm"]

logger = logging.getLogger(__name__)

NAME = "handler_ablation"
QUICK = {
    "data#patch_size": [16, 16, 16], "data#crop_margin": 4, "data#target_spacing": [4.0, 4.0, 4.0],
    "model#base_filters": 4, "model#depth": 2,
}  # fmt: skip


def _curriculum(epochs: int) -> dict[str, Any]:
    first = max(1, epochs // 5)
    stages = [
        {"epochs": first, "min_diameter": 8.0},
        {"epochs": first, "min_diameter": 5.0},
        {"epochs": max(1, epochs - 2 * first), "min_diameter": 0.0},
    ]
    return {"training#curriculum#enabled": True, "training#curriculum#stages": stages}


def _progressive(epochs: int, patch: Sequence[int], depth: int) -> dict[str, Any]:
    half = max(1, epochs // 2)
    small = [max(2**depth, int(round(p * 2 / 3 / 2**depth)) * 2**depth) for p in patch]
    stages = [
        {"epochs": half, "patch_size": small, "batch_size": 2},
        {"epochs": max(1, epochs - half), "patch_size": list(patch), "batch_size": 1},
    ]
    return {"training#progressive#enabled": True, "training#progressive#stages": stages}


MINING_OFF = {"training#hard_negative_mining#enabled": False}


def _mining(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"training#hard_negative_mining#enabled": True}
    if args.mining_interval is not None:
        out["training#hard_negative_mining#interval"] = args.mining_interval
    if args.mining_threshold is not None:
        out["training#hard_negative_mining#score_threshold"] = args.mining_threshold
    return out


ARMS: dict[str, Callable[[argparse.Namespace, Mapping[str, Any]], dict[str, Any]]] = {
    "base": lambda a, s: dict(MINING_OFF),
    "mining": lambda a, s: _mining(a),
    "curriculum": lambda a, s: {**MINING_OFF, **_curriculum(a.epochs)},
    "progressive": lambda a, s: {
        **MINING_OFF,
        **_progressive(a.epochs, s["data"]["patch_size"], int(s["model"]["depth"])),
    },
    "pretrained": lambda a, s: {
        **MINING_OFF,
        "training#pretrained#checkpoint": str(a.pretrained),
        "training#pretrained#freeze_encoder": True,
        "training#pretrained#freeze_epochs": max(1, a.epochs // 4),
    },
}
EVAL_ONLY = {"tta": "base"}  # arm -> the trained arm whose model it evaluates


def fps_at_sensitivity(fps: Sequence[float], sensitivity: Sequence[float], target: float) -> float:
    """Fewest FP/scan at which the FROC curve reaches ``target`` sensitivity (``inf`` if it never does)."""
    reached = np.asarray(sensitivity) >= target - 1e-9
    return float(np.min(np.asarray(fps)[reached])) if reached.any() else float("inf")


def _froc(candidates_csv: Path, test_dir: Path) -> Any:
    from pivot_monai.data.raw_dataset import discover_raw_dataset
    from pivot_monai.metrics import compute_froc, read_submission_csv

    raw = discover_raw_dataset(test_dir)
    return compute_froc(read_submission_csv(candidates_csv), raw.annotations, raw.seriesuids, raw.excluded)


def run_arm(name: str, args: argparse.Namespace, processed: Path, test_dir: Path) -> dict[str, Any]:
    """Train arm ``name`` (or reuse the trained arm it evaluates) and evaluate it on the held-out scans."""
    from monai.bundle import ConfigWorkflow

    from pivot_monai.inference.evaluate import evaluate
    from pivot_monai.inference.settings import InferenceSettings

    base = dict(QUICK) if args.quick else {}
    sections = load_profile(args.config, base)
    trained = EVAL_ONLY.get(name, name)
    root = WORK_DIR / "handler_ablation" / trained
    result: dict[str, Any] = {"arm": name}
    if name not in EVAL_ONLY:
        overrides = {
            **base,
            "training#epochs": args.epochs,
            "training#scheduler#warmup_epochs": min(2, args.epochs - 1),
            "validation#interval": args.epochs,  # one validation, at the end: the arms' final models compared
            "checkpointing#save_interval": 0,
            **ARMS[name](args, sections),
        }
        wf = ConfigWorkflow(
            config_file=[str(CONFIG_DIR / "train.yaml"), str(args.config)],
            meta_file=str(CONFIG_DIR / "metadata.json"),
            logging_file=str(CONFIG_DIR / "logging.conf"),
            workflow_type="train",
            run_id="training",
            bundle_root=str(root),
            dataset_dir=str(processed),
            **overrides,
        )
        wf.initialize()
        start = time.perf_counter()
        wf.run()
        result["train_seconds"] = time.perf_counter() - start
        trainer = wf.parser.get_parsed_content("train#trainer")
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        miner = next((h for h in wf.parser.get_parsed_content("train#handlers") if hasattr(h, "total_seconds")), None)
        result.update(
            val_cpm=float(evaluator.state.metrics.get("val_froc", float("nan"))),
            iterations=int(trainer.state.iteration),
            mining_seconds=None if miner is None else miner.total_seconds,
            overrides={k: v for k, v in overrides.items() if k not in base},
        )
        wf.finalize()
    inference = dict(sections["inference"], tta={"enabled": name == "tta", "num_augmentations": 8})
    start = time.perf_counter()
    metrics = evaluate(
        root / "models" / "model.pt",
        test_dir,
        WORK_DIR / "handler_ablation" / f"eval_{name}",
        InferenceSettings.from_config({**sections, "inference": inference}),
        bootstrap=0,
    )
    result["eval_seconds"] = time.perf_counter() - start
    result["test"] = {k: v for k, v in metrics.items() if k == "cpm" or k.startswith(("sensitivity@", "n_"))}
    froc = _froc(WORK_DIR / "handler_ablation" / f"eval_{name}" / "candidates.csv", test_dir)
    result["froc_curve"] = {"fps": froc.fps.tolist(), "sensitivity": froc.sensitivity.tolist()}
    logger.info("arm %s: val CPM %s, held-out CPM %.3f", name, result.get("val_cpm"), metrics["cpm"])
    return result


def _rows(results: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    base = results.get("base", {})
    reach = [r["froc_curve"]["sensitivity"] for r in results.values() if r["froc_curve"]["sensitivity"]]
    target = min((max(s) for s in reach), default=float("nan"))
    rows = []
    for name, r in results.items():
        fps = fps_at_sensitivity(r["froc_curve"]["fps"], r["froc_curve"]["sensitivity"], target)
        ref = base if name != "base" else {}
        if name not in EVAL_ONLY:
            rows.append(Row(NAME, f"{name}: validation CPM", r.get("val_cpm"), ref.get("val_cpm")))
        rows.append(Row(NAME, f"{name}: held-out CPM", r["test"]["cpm"], ref.get("test", {}).get("cpm")))
        rows.append(Row(NAME, f"{name}: held-out FP/scan at sensitivity {target:.3f}", fps))
        if name not in EVAL_ONLY:
            rows.append(Row(NAME, f"{name}: training s", r.get("train_seconds"), ref.get("train_seconds")))
        rows.append(Row(NAME, f"{name}: held-out evaluation s", r["eval_seconds"], ref.get("eval_seconds")))
        if r.get("mining_seconds") is not None:
            rows.append(Row(NAME, f"{name}: of which mining s", r["mining_seconds"], r.get("train_seconds")))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", choices=[*ARMS, *EVAL_ONLY], default=[*ARMS, *EVAL_ONLY])
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="profile layered over train.yaml")
    p.add_argument("--epochs", type=int, default=20, help="epochs of every arm")
    p.add_argument("--scans", type=int, default=40, help="training-pool scans (split 70/15/15)")
    p.add_argument("--train-seed", type=int, default=2000, help="seed of the training scans")
    p.add_argument("--test-scans", type=int, default=20, help="held-out scans")
    p.add_argument("--test-seed", type=int, default=1000, help="seed of the held-out scans (never trained on)")
    p.add_argument("--mining-interval", type=int, default=None, help="epochs between mining rounds (default: profile)")
    p.add_argument("--mining-threshold", type=float, default=None, help="mined FP score floor (default: profile)")
    p.add_argument("--pretrained", type=Path, default=Path("bundle/models/model.pt"), help="pretrained arm's weights")
    p.add_argument("--merge", action="store_true", help="print one table of every handler_ablation*.json")
    p.add_argument("--quick", action="store_true", help="6 scans, 2 epochs, tiny network at 4 mm")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the selected arms, write ``benchmarks/results/handler_ablation[_<arms>].json``; returns the rows."""
    args = parse_args(argv)
    if args.merge:
        results = {}
        for path in sorted(RESULTS_DIR.glob(f"{NAME}*.json")):
            results.update(json.loads(path.read_text())["details"]["arms"])
        order = [a for a in [*ARMS, *EVAL_ONLY] if a in results]
        return _rows({a: results[a] for a in order})
    if args.quick:
        args.scans, args.epochs, args.test_scans, args.mining_interval = 6, 2, 2, 1
    if "pretrained" in args.arms and not args.pretrained.is_file():
        raise SystemExit(f"--pretrained {args.pretrained}: no such checkpoint (train one with `make demo`)")
    if "tta" in args.arms and "base" not in args.arms and not (WORK_DIR / NAME / "base" / "models").exists():
        raise SystemExit("the tta arm evaluates the base arm's model: run --arms base first (or together)")
    overrides = QUICK if args.quick else None
    processed, _ = ensure_training_split(args.train_seed, args.scans, args.config, overrides)
    test_dir = ensure_raw_dataset("small", args.test_scans, args.test_seed)
    arms = sorted(args.arms, key=lambda a: a in EVAL_ONLY)  # trained arms first
    results = {name: run_arm(name, args, processed, test_dir) for name in arms}
    rows = _rows(results)
    suffix = "" if set(args.arms) == {*ARMS, *EVAL_ONLY} else "_" + "_".join(args.arms)
    settings = {k: str(v) for k, v in vars(args).items()}
    write_results(NAME + suffix, rows, {"arms": results, "processed": str(processed)}, settings)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
