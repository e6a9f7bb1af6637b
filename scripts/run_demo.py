#!/usr/bin/env python
"""The ``make demo`` job on synthetic data: synth -> preprocess -> split -> train -> infer -> evaluate.

Every step is the same public command a user runs (training is the real ``python -m monai.bundle run training``
with the CPU demo profile ``bundle/configs/demo.yaml`` layered over ``train.yaml``); this script only chains them.
Synthesis is skipped when its output exists and preprocessing resumes, so an interrupted demo continues.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from pivot_monai.cli import main as pivot

logger = logging.getLogger("pivot_monai.demo")

DEMO_CONFIG = Path("bundle/configs/demo.yaml")


def run(work_dir: Path, num_scans: int, seed: int) -> int:
    raw, processed = work_dir / "raw", work_dir / "processed"
    config = ["--config", str(DEMO_CONFIG)] if DEMO_CONFIG.exists() else []
    steps: list[tuple[str, list[str], Path]] = [
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
            raw / "seriesuids.csv",
        ),
        (
            "preprocess",
            ["preprocess", "--input-dir", str(raw), "--output-dir", str(processed), "--workers", "2", *config],
            processed / "preprocess_report.json",
        ),
        ("split", ["split", "--data-dir", str(processed), "--seed", str(seed)], processed / "datalist.json"),
    ]
    for name, argv, done in steps:
        if done.exists() and name == "synth":
            logger.info("[demo] %s: %s exists, skipping", name, done)
            continue
        logger.info("[demo] %s: pivot %s", name, " ".join(argv))
        code = pivot(argv)
        if code:
            logger.error("[demo] step %s failed with exit code %d", name, code)
            return code
    code = train(processed)
    if code:
        return code
    logger.info(
        "[demo] done: raw data in %s, processed splits in %s, preview %s, model bundle/models/model.pt",
        raw,
        processed,
        work_dir / "preview.png",
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
    p.add_argument("--num-scans", type=int, default=40, help="synthetic scans to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the split")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run(args.work_dir, args.num_scans, args.seed))
