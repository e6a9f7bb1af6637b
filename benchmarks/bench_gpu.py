"""GPU benchmark: the inference and training benchmarks on a CUDA device, with AMP on and off.

Issue #7 asks, wherever a CUDA GPU is available, for seconds per fullsize scan and training patches per second with
mixed precision on and off. Without a GPU this writes one ``skipped`` row and exits 0, so ``make bench`` runs it
everywhere; ``--device cpu`` runs the same arms on the CPU (autocast in ``device.amp_dtype``), which is how the
tests exercise this module on machines without a GPU.

Per profile (``--profiles``):

* **inference**: :class:`~pivot_monai.inference.pipeline.InferencePipeline` (``pivot infer``'s pipeline: read,
  lung crop + resampling, sliding window, decoding) over ``--scans`` fullsize scans, AMP on vs off alternating for
  ``--repeats`` rounds, one predictor per arm in this process (the first scan of an arm, which pays CUDA and cuDNN
  warm-up, is reported apart); stage seconds, peak GPU memory and CPM;
* **training**: :func:`benchmarks.bench_training.run_arm` (the bundle's ``SupervisedTrainer`` through
  ``ConfigWorkflow``) on small processed scans with ``device.type`` and ``device.mixed_precision`` set per arm:
  patches/s, data-wait share and peak GPU memory.

Profiles: ``demo`` is ``demo.yaml`` with ``make demo``'s model (CPM meaningful), ``default`` is ``train.yaml``
alone (1.5 mm, 64^3 patches, 16 filters, depth 4: the GPU profile) with seeded random weights (speed only).

Usage::

    python -m benchmarks.bench_gpu                       # cuda: both profiles, 3 fullsize scans, 2 rounds
    python -m benchmarks.bench_gpu --quick --device cpu  # smoke test: demo profile, 1 small scan at 4 mm
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    NETWORK_PROFILES,
    QUICK_OVERRIDES,
    WORK_DIR,
    Row,
    alternate,
    ensure_raw_dataset,
    format_table,
    froc_on_raw,
    load_profile,
    median,
    resolve_checkpoint,
    setup_logging,
    write_results,
)

__all__ = ["inference_arm", "main", "training_arm"]

logger = logging.getLogger(__name__)

NAME = "gpu"
ANCHOR = "MONAI RetinaNet bundle: 7.3 s per 512x512x192 scan end to end on an A100 with AMP"


def _gpu_peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def inference_arm(
    scans: Sequence[str], sections: Mapping[str, Any], checkpoint: str, device: str, amp: bool
) -> dict[str, Any]:
    """``pivot infer``'s pipeline over ``scans`` in this process with AMP on or off.

    Returns:
        per-scan seconds and stages (the first scan separately: it pays CUDA/cuDNN warm-up), peak GPU memory (MB,
        CUDA only) and the candidates per seriesuid.
    """
    from pivot_monai.inference.pipeline import InferencePipeline
    from pivot_monai.inference.predictor import Predictor
    from pivot_monai.inference.settings import InferenceSettings

    _gpu_peak_reset(device)
    start = time.perf_counter()
    settings = InferenceSettings.from_config(sections, device=device, amp=amp)
    predictor = Predictor.from_settings(checkpoint, settings)
    pipeline = InferencePipeline(predictor, settings)
    load = time.perf_counter() - start
    seconds, stages, candidates = [], [], {}
    for scan in scans:
        t = time.perf_counter()
        pred = pipeline.predict(scan)
        seconds.append(time.perf_counter() - t)
        stages.append(pred.seconds)
        candidates[pred.seriesuid] = pred.candidates
    return {
        "amp": amp,
        "autocast": str(predictor.autocast_dtype) if predictor.autocast else None,
        "load_s": load,
        "seconds": seconds,
        "stages": stages,
        "gpu_peak_mb": _gpu_peak_mb(device),
        "candidates": candidates,
    }


def training_arm(config: Path, quick: bool, device: str, amp: bool, epochs: int, scans: int) -> dict[str, Any]:
    """The bundle's training loop (:func:`benchmarks.bench_training.run_arm`) on ``device`` with AMP on or off."""
    from benchmarks.bench_training import make_processed, run_arm

    processed, datalist = make_processed(scans, 0, config)
    extra: dict[str, Any] = {"device#type": device, "device#mixed_precision": amp, "device#strict": True}
    if device == "cpu":  # the bundle keeps CPU autocast off unless forced
        extra["device#force_cpu_amp"] = amp
    if quick:
        extra.update({"data#patch_size": [32, 32, 32], "data#crop_margin": 4, "data#num_workers": 0})
    _gpu_peak_reset(device)
    result = run_arm(config, processed, datalist, epochs, False, f"gpu_{config.stem}_amp{int(amp)}", extra)
    return {**result, "gpu_peak_mb": _gpu_peak_mb(device)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the arms run (default cuda)")
    p.add_argument("--quick", action="store_true", help="demo profile only, 1 small scan at 4 mm, 1 round")
    p.add_argument("--profiles", nargs="+", choices=sorted(NETWORK_PROFILES), default=None, help="default: both")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt of the demo profile (default: make demo's)")
    p.add_argument("--scans", type=int, default=3, help="fullsize scans for inference")
    p.add_argument("--seed", type=int, default=1000, help="synthetic dataset seed (held out from training)")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    p.add_argument("--train-scans", type=int, default=8, help="small training scans")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per arm and round")
    p.add_argument("--no-training", action="store_true", help="inference arms only")
    return p.parse_args(argv)


def _profile(name: str, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Inference and training arms of one profile; returns its rows and raw results."""
    config = NETWORK_PROFILES[name]
    sections = load_profile(config, QUICK_OVERRIDES if args.quick else None)
    if name == "demo":
        checkpoint, trained = resolve_checkpoint(args.checkpoint, sections["model"], sections)
    else:  # no trained model of the 1.5 mm profile exists here: seeded random weights, speed only
        checkpoint, trained = resolve_checkpoint(WORK_DIR / "no_such_checkpoint.pt", sections["model"])
    size, scans, repeats = ("small", 1, 1) if args.quick else ("fullsize", args.scans, args.repeats)
    raw_dir = ensure_raw_dataset(size, scans, args.seed)
    paths = [str(p) for p in sorted((raw_dir / "subset0").glob("*.mhd"))]
    arms = {f"amp_{flag}": (lambda amp=amp: inference_arm(paths, sections, str(checkpoint), args.device, amp))
            for flag, amp in (("on", True), ("off", False))}  # fmt: skip
    runs = alternate(arms, repeats)
    tag = f"{name} profile, {args.device}"
    rows: list[Row] = []

    def steady(arm: str, stage: str | None = None) -> float:
        # every scan of every round but each arm's very first scan (CUDA context, cuDNN autotuning)
        vals = [(r["stages"][i][stage] if stage else r["seconds"][i]) for r in runs[arm] for i in range(len(paths))]
        return median(vals[1:] if len(vals) > 1 else vals)

    on, off = runs["amp_on"], runs["amp_off"]
    rows += [
        Row(NAME, f"inference s/scan, AMP on vs off [{tag}]", steady("amp_on"), steady("amp_off")),
        Row(NAME, f"inference network s/scan, AMP on vs off [{tag}]", steady("amp_on", "network"),
            steady("amp_off", "network")),
        Row(NAME, f"inference first scan s (warm-up), AMP on vs off [{tag}]", on[0]["seconds"][0],
            off[0]["seconds"][0]),
    ]  # fmt: skip
    if args.device == "cuda":
        rows.append(Row(NAME, f"inference peak GPU MB, AMP on vs off [{tag}]", max(r["gpu_peak_mb"] for r in on),
                        max(r["gpu_peak_mb"] for r in off)))  # fmt: skip
    froc = {arm: froc_on_raw(runs[arm][0]["candidates"], raw_dir) for arm in runs}
    cpm = "CPM" if trained else "CPM [random weights]"
    rows.append(Row(NAME, f"inference {cpm}, AMP on vs off [{tag}]", froc["amp_on"].cpm, froc["amp_off"].cpm))
    details: dict[str, Any] = {
        "config": str(config),
        "checkpoint": str(checkpoint),
        "trained": trained,
        "inference": {arm: [{k: v for k, v in r.items() if k != "candidates"} for r in rs] for arm, rs in runs.items()},
    }
    if not args.no_training:
        train_scans, epochs = (3, 1) if args.quick else (args.train_scans, args.epochs)
        train = alternate(
            {f"amp_{flag}": (lambda amp=amp: training_arm(config, args.quick, args.device, amp, epochs, train_scans))
             for flag, amp in (("on", True), ("off", False))},
            repeats,
        )  # fmt: skip

        def med(arm: str, key: str) -> float:
            return median([r[key] for r in train[arm]])

        rows += [
            Row(NAME, f"training patches/s, AMP on vs off [{tag}]", med("amp_on", "patches_per_s"),
                med("amp_off", "patches_per_s")),
            Row(NAME, f"training data wait % of step, AMP on vs off [{tag}]", med("amp_on", "wait_percent"),
                med("amp_off", "wait_percent")),
        ]  # fmt: skip
        if args.device == "cuda":
            rows.append(Row(NAME, f"training peak GPU MB, AMP on vs off [{tag}]", med("amp_on", "gpu_peak_mb"),
                            med("amp_off", "gpu_peak_mb")))  # fmt: skip
        details["training"] = train
    return rows, details


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/gpu.json`` and return the table rows."""
    import torch

    args = parse_args(argv)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["anchor"] = ANCHOR
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.warning("no CUDA GPU on this machine: the GPU benchmark is skipped (--device cpu runs its arms here)")
        rows = [Row(NAME, "skipped: no CUDA GPU on this machine", None)]
        write_results(NAME, rows, {}, settings)
        return rows
    if args.device == "cuda":
        settings["gpu"] = torch.cuda.get_device_name(0)
    profiles = ["demo"] if args.quick else (args.profiles or ["demo", "default"])
    rows, details = [], {}
    for name in profiles:
        profile_rows, details[name] = _profile(name, args)
        rows += profile_rows
    write_results(NAME, rows, details, settings)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
    sys.stdout.write(f"anchor: {ANCHOR}\n")
