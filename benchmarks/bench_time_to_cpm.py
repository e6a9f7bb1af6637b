"""Time-to-CPM: held-out-domain CPM of a training run's periodic checkpoints against training time, and patches/s.

A training run with ``checkpointing.save_interval: N`` leaves ``checkpoint_epoch=E.pt`` every ``N`` epochs (set
``checkpointing.keep_last_n`` high enough to keep them all). This benchmark evaluates each of them, and the final
``model.pt``, on the fullsize scans of the generator's ``heldout`` domain (never trained on), detector scores only
(the FP-reduction classifier is trained on the final detector's candidates, so it would flatter no checkpoint), and
takes each checkpoint's training time from its file time against the run's start (the stamp of its first
TensorBoard event file, in ``--run-dir`` or the bundle root above it, where ``logs/`` sits beside ``models/``), so
hard-negative mining and validation count in the curve's minutes. The run's epoch count, which numbers the final
``model.pt``, is read from the log's ``epoch N/M`` lines, so a profile layered over ``--config`` (such as
``cpu_long.yaml`` over ``demo.yaml``) numbers it right.

Patches/s is the median of the per-epoch summary lines of the run's log (crops per second of the epochs'
iterations, mining and validation excluded).

Usage::

    python -m benchmarks.bench_time_to_cpm --run-dir RUN/models --train-log RUN.log --config bundle/configs/demo.yaml
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import Row, ensure_raw_dataset, format_table, load_profile, setup_logging, write_results

__all__ = ["main", "patches_per_second", "resolve_run_dir", "run_epochs", "run_start"]

logger = logging.getLogger(__name__)

NAME = "time_to_cpm"
_RATE = re.compile(r"epoch \d+/\d+: loss .*?, ([\d.]+) patches/s")
_EPOCHS = re.compile(r"epoch \d+/(\d+)\b")
_CKPT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
_EVENTS = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def patches_per_second(log_text: str) -> float | None:
    """Median of the per-epoch ``patches/s`` of the training log's summary lines (``None`` when there are none)."""
    rates = [float(r) for r in _RATE.findall(log_text)]
    return float(np.median(rates)) if rates else None


def run_epochs(log_text: str) -> int | None:
    """The run's number of epochs, from the last ``epoch N/M`` progress line of its log (``None`` when none)."""
    totals = _EPOCHS.findall(log_text)
    return int(totals[-1]) if totals else None


def run_start(run_dir: Path) -> float | None:
    """Unix time the run started: the stamp in the name of its first TensorBoard event file.

    The event files are looked for in ``run_dir`` and its ``logs/`` or ``tensorboard/``, then in those of its parent:
    the bundle's ``checkpointing.dir`` (``models/``) and ``logging.log_dir`` (``logs/``) are siblings by default.
    Only these folders are read, not their subfolders, so another run nested in or beside this one (``make
    demo-long``'s ``bundle/models/cpu_long/``) never lends its start.
    """
    folders = [d / sub for d in (run_dir, run_dir.parent) for sub in ("", "logs", "tensorboard")]
    for folder in folders:
        stamps = [int(m.group(1)) for p in folder.glob("events.out.tfevents.*") if (m := _EVENTS.search(p.name))]
        if stamps:
            return float(min(stamps))
    return None


def _checkpoints(run_dir: Path, epochs: int) -> list[tuple[int, Path]]:
    found = sorted((int(m.group(1)), p) for p in run_dir.glob("checkpoint_epoch=*.pt") if (m := _CKPT.match(p.name)))
    final = run_dir / "model.pt"
    if final.exists() and all(e != epochs for e, _ in found):
        found.append((epochs, final))
    return found


def resolve_run_dir(run_dir: Path, epochs: int) -> tuple[Path, list[tuple[int, Path]]]:
    """The folder holding the run's checkpoints (``run_dir``, or its ``models/`` when given the bundle root) and them.

    Raises:
        SystemExit: neither holds a checkpoint (the message says which folder to pass).
    """
    for folder in (run_dir, run_dir / "models"):
        if found := _checkpoints(folder, epochs):
            if folder != run_dir:
                logger.info("--run-dir %s is a bundle root: reading its checkpoints from models/", run_dir)
            return folder, found
    raise SystemExit(
        f"--run-dir {run_dir}: no checkpoint_epoch=N.pt or model.pt there; pass the run's checkpointing.dir "
        "(RUN/models by default) of a run trained with checkpointing.save_interval > 0"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run-dir", type=Path, required=True, help="the run's checkpointing.dir (models/) or its bundle root"
    )
    p.add_argument("--train-log", type=Path, required=True, help="the training run's console log")
    p.add_argument("--config", type=Path, required=True, help="the profile the run used, layered over train.yaml")
    p.add_argument("--heldout-scans", type=int, default=20, help="fullsize held-out-domain scans")
    p.add_argument("--heldout-seed", type=int, default=9000, help="held-out-domain seed")
    p.add_argument("--heldout-dir", type=Path, default=None, help="use this raw or processed held-out set instead")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Evaluate every checkpoint of ``--run-dir``, write ``benchmarks/results/time_to_cpm.json``, return the rows."""
    from pivot_monai.inference.evaluate import evaluate
    from pivot_monai.inference.settings import InferenceSettings

    args = parse_args(argv)
    sections = load_profile(args.config)
    settings = InferenceSettings.from_config(sections)
    log_text = args.train_log.read_text(errors="replace")
    rate = patches_per_second(log_text)
    epochs = run_epochs(log_text) or int(sections["training"]["epochs"])
    args.run_dir, checkpoints = resolve_run_dir(args.run_dir, epochs)
    start = run_start(args.run_dir)
    if start is None:
        logger.warning(
            "no TensorBoard event file under %s or its parent: minutes of training are unknown", args.run_dir
        )
    heldout = args.heldout_dir or ensure_raw_dataset("fullsize", args.heldout_scans, args.heldout_seed, "heldout")
    rows = [Row(NAME, "training patches/s (median epoch)", rate)]
    curve = []
    for epoch, path in checkpoints:
        minutes = (path.stat().st_mtime - start) / 60 if start else float("nan")
        out = args.run_dir / "time_to_cpm" / f"epoch{epoch}"
        metrics = evaluate(path, heldout, out, settings, bootstrap=0, classifier=None)
        curve.append({"epoch": epoch, "minutes": minutes, "cpm": metrics["cpm"], "checkpoint": str(path)})
        logger.info("epoch %d (%.1f min of training): held-out CPM %.3f", epoch, minutes, metrics["cpm"])
        rows.append(Row(NAME, f"held-out CPM after epoch {epoch} ({minutes:.1f} min)", metrics["cpm"]))
    write_results(NAME, rows, {"curve": curve, "run_start": start}, {k: str(v) for k, v in vars(args).items()})
    return rows


if __name__ == "__main__":
    setup_logging()
    sys.stdout.write(format_table(main()) + "\n")
