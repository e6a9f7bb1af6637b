"""Run the benchmarks in order and print one table (``make bench``).

Each benchmark writes ``benchmarks/results/<name>.json`` (machine, core count, torch/MONAI versions, git commit,
settings, rows and raw measurements); this runner prints every row as one markdown table: benchmark, metric, value,
baseline, ratio (value / baseline), target, pass/fail. A benchmark that crashes is reported and the others go on.

Usage::

    python -m benchmarks.run_all                      # full mode (long: fullsize scans, several rounds)
    python -m benchmarks.run_all --quick              # smoke test, under 2 minutes on 2 cores
    python -m benchmarks.run_all --only compute preprocess
    python -m benchmarks.run_all --checkpoint path/to/model.pt

Exit code: 0 when every benchmark ran, 1 when one crashed; ``--strict`` also gives 1 for a missed target.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Row, format_table, machine_info, setup_logging

__all__ = ["BENCHMARKS", "main"]

logger = logging.getLogger(__name__)

# run order; name -> module. Modules taking --checkpoint get it passed through.
BENCHMARKS = {
    "inference": "benchmarks.bench_inference",
    "training": "benchmarks.bench_training",
    "preprocess": "benchmarks.bench_preprocess",
    "compute": "benchmarks.bench_compute",
    "quality": "benchmarks.bench_quality",
    "gpu": "benchmarks.bench_gpu",  # AMP on/off on a CUDA GPU; one "skipped" row without one
}
_TAKES_CHECKPOINT = ("inference", "quality", "gpu")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: every benchmark in under 2 minutes in total")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None, help="run only these benchmarks")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt for inference and quality")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks, print the table; returns the exit code."""
    args = parse_args(argv)
    names = [n for n in BENCHMARKS if args.only is None or n in args.only]
    info = machine_info()
    logger.info(
        "%s (%s: %s), %s usable of %s cores, load %s; torch %s (%d threads, OMP_WAIT_POLICY=%s), MONAI %s, commit %s",
        info["cpu_model"],
        info["cpu_capability"],
        " ".join(info["cpu_flags"]),
        info["usable_cores"],
        info["logical_cores"],
        info["load_average"],
        info["torch"],
        info["torch_threads"],
        info["OMP_WAIT_POLICY"],
        info["monai"],
        info["git_commit"],
    )
    rows: list[Row] = []
    crashed: list[str] = []
    start = time.perf_counter()
    for name in names:
        sub = ["--quick"] if args.quick else []
        if args.checkpoint and name in _TAKES_CHECKPOINT:
            sub += ["--checkpoint", str(args.checkpoint)]
        logger.info("=== %s %s", name, " ".join(sub))
        t0 = time.perf_counter()
        try:
            rows += importlib.import_module(BENCHMARKS[name]).main(sub)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
            logger.exception("benchmark %s failed", name)
            rows.append(Row(name, f"crashed: {type(err).__name__}: {str(err).splitlines()[0][:80]}", None))
            crashed.append(name)
        logger.info("=== %s done in %.1f s", name, time.perf_counter() - t0)
    logger.info("all benchmarks in %.1f s (%s mode)", time.perf_counter() - start, "quick" if args.quick else "full")
    sys.stdout.write("\n" + format_table(rows) + "\n")
    missed = [r for r in rows if r.passed is False]
    if missed:
        logger.warning("%d target(s) missed: %s", len(missed), "; ".join(f"{r.benchmark}: {r.metric}" for r in missed))
    return 1 if crashed or (args.strict and missed) else 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
