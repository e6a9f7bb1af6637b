#!/usr/bin/env python
"""The ``make demo`` job on synthetic data: synth -> preprocess -> split -> train -> infer -> evaluate.

Every step is the same public command a user runs (training is the real ``python -m monai.bundle run training``
with the CPU demo profile ``bundle/configs/demo.yaml`` layered over ``train.yaml``); this script only chains them.
Synthesis is skipped when its output exists and preprocessing resumes, so an interrupted demo continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pivot_monai.cli import main as pivot
from pivot_monai.data.synthetic import dataset_is_current

logger = logging.getLogger("pivot_monai.demo")

DEMO_CONFIG = Path("bundle/configs/demo.yaml")


def run(work_dir: Path, num_scans: int, seed: int) -> int:
    raw, processed = work_dir / "raw", work_dir / "processed"
    config = ["--config", str(DEMO_CONFIG)] if DEMO_CONFIG.exists() else []
    steps: list[tuple[str, list[str]]] = [
        (
            "synth",
            [
                "synth",
                "--output-dir",
                str(raw),
                "--num-scans",
                str(num_scans),
                "--seed",
                str(seed),
                "--size",
                "small",
                "--preview",
                str(work_dir / "preview.png"),
            ],
        ),
        (
            "preprocess",
            ["preprocess", "--input-dir", str(raw), "--output-dir", str(processed), "--workers", "2", *config],
        ),
        ("split", ["split", "--data-dir", str(processed), "--seed", str(seed)]),
    ]
    for name, argv in steps:
        if name == "synth" and dataset_is_current(raw, num_scans, seed, "small"):
            logger.info("[demo] %s: %s holds the current synthetic data, skipping", name, raw)
            continue
        if name == "synth" and raw.exists():
            # an older generator version (or other settings) renders different scans: stale raw and processed data
            # would silently change the demo's results, so both are rebuilt
            logger.warning("[demo] %s: %s is not this generator's %d scans of seed %d; regenerating", name, raw,
                           num_scans, seed)  # fmt: skip
            shutil.rmtree(raw)
            shutil.rmtree(processed, ignore_errors=True)
        logger.info("[demo] %s: pivot %s", name, " ".join(argv))
        code = pivot(argv)
        if code:
            logger.error("[demo] step %s failed with exit code %d", name, code)
            return code
    code = train(processed)
    if code:
        return code
    return infer_and_evaluate(work_dir, processed, config)


def infer_and_evaluate(
    work_dir: Path, processed: Path, config: list[str], checkpoint: Path = Path("bundle/models/model.pt")
) -> int:
    """Infer on the raw test scans, evaluate on the held-out test split and report the CPM."""
    results = work_dir / "results"
    test_raw = sorted(json.loads(m.read_text())["source"] for m in (processed / "test").glob("*/meta.json"))
    infer_args = ["infer", "--checkpoint", str(checkpoint), "--input", *test_raw, "--output", str(results / "infer")]
    code = pivot([*infer_args, "--save-previews", *config])
    if code:
        logger.error("[demo] inference failed with exit code %d", code)
        return code
    eval_args = ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(processed / "test")]
    code = pivot([*eval_args, "--output-dir", str(results / "eval"), *config])
    if code:
        logger.error("[demo] evaluation failed with exit code %d", code)
        return code
    metrics = json.loads((results / "eval" / "metrics.json").read_text())
    logger.info(
        "[demo] held-out test split: CPM %.3f (%s nodules in %s scans); sensitivity@1FP %s, size MAE %s mm",
        metrics.get("cpm") or float("nan"),
        metrics.get("n_nodules"),
        metrics.get("n_scans"),
        metrics.get("sensitivity@1"),
        metrics.get("size_mae_mm"),
    )
    logger.info(
        "[demo] outputs: model %s, candidates %s, metrics %s, FROC plot %s, previews %s",
        checkpoint,
        results / "infer" / "candidates.csv",
        results / "eval" / "metrics.json",
        results / "eval" / "froc.png",
        results / "infer" / "previews",
    )
    return 0


def train(processed: Path) -> int:
    """Train with the real bundle command and the demo profile; returns its exit code."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "['bundle/configs/train.yaml','bundle/configs/demo.yaml']",
        "--dataset_dir",
        str(processed),
    ]
    logger.info("[demo] train: %s", " ".join(cmd))
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    logger.info("[demo] training took %.1f min (exit code %d)", (time.perf_counter() - t0) / 60, code)
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("data/demo"), help="where the demo writes everything")
    p.add_argument("--num-scans", type=int, default=120, help="synthetic scans (demo.yaml is sized for 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the split")
    return p.parse_args(argv)


if __name__ == "__main__":
    from pivot_monai.cli import setup_logging

    setup_logging()
    args = parse_args()
    sys.exit(run(args.work_dir, args.num_scans, args.seed))
