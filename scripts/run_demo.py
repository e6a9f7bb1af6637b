#!/usr/bin/env python
"""The ``make demo`` job on synthetic data: synth -> preprocess -> split -> train -> infer -> evaluate on two domains.

Every step is the same public command a user runs (training is the real ``python -m monai.bundle run training``
with the CPU demo profile ``bundle/configs/demo.yaml`` layered over ``train.yaml``); this script only chains them.

Data: ``--num-scans`` ``medium`` scans (~1.1 mm in-plane, real-CT vessel density) of the generator's ``train``
domain, split 70/15/15, and ``--heldout-scans`` fullsize 512 x 512 scans of the disjoint ``heldout`` domain, which
nothing trains or selects on. The summary prints both domains: CPM with CIs, FP/scan at 85/90 % sensitivity and the
per-category sensitivities. After the detector, the false-positive-reduction classifier is trained on its candidates
(``pivot train-fpr``; ``--no-fpr`` skips it). Synthesis is skipped when its output exists (cached between runs)
and preprocessing resumes, so an interrupted demo continues.

``--fast`` (``make demo-fast``) is the 15-minute first run: 70 + 16 scans and ``bundle/configs/demo_fast.yaml``
layered over ``demo.yaml`` (16 epochs, a 14-epoch classifier), trained into ``bundle/models/demo_fast/``. It
scores lower on the held-out domain than ``make demo`` (benchmarks/README.md).

``--long`` (``make demo-long``) trains the CPU long profile, ``bundle/configs/cpu_long.yaml`` over ``demo.yaml``
(72 epochs, under an hour of training on 2 cores), on ``make demo``'s own scans (the same work folder, so its
synthetic and processed data are reused) into ``bundle/models/cpu_long/``: the best held-out CPM of the CPU
profiles.
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
from typing import NamedTuple

from pivot_monai.cli import main as pivot
from pivot_monai.data.synthetic import dataset_is_current

logger = logging.getLogger("pivot_monai.demo")

DEMO_CONFIG = Path("bundle/configs/demo.yaml")
FAST_CONFIG = Path("bundle/configs/demo_fast.yaml")
LONG_CONFIG = Path("bundle/configs/cpu_long.yaml")
MODELS = Path("bundle/models")
METADATA = Path("bundle/configs/metadata.json")
TRAIN_SIZE = "medium"
HELDOUT_SEED = 9000  # seeds >= 1000 are never trained on


# a NamedTuple rather than a dataclass: tests load this script by path, outside sys.modules, where dataclasses fail
class Profile(NamedTuple):
    """One demo profile: what it trains with, on how many scans, and where its model goes.

    Attributes:
        layers: bundle configs layered over ``train.yaml``, in order.
        preprocess: the config ``pivot preprocess`` reads (its data section; the last layer that sets any).
        models: the run folder; each profile has its own, so one never resumes into or over another's model.
        fpr_config: the config of ``pivot train-fpr`` (its fpr section), or None for ``fpr.yaml``'s.
        num_scans: default train-domain scans.
        heldout_scans: default held-out-domain scans.
        metadata: the ``metadata.json`` whose ``eval_metrics`` the run writes (it describes ``bundle/models/model.pt``
            only), or None.
        results: the folder in the work folder for inference and evaluation outputs (a profile sharing another's
            work folder and scans writes its own).
    """

    layers: tuple[Path, ...]
    preprocess: Path
    models: Path
    fpr_config: Path | None
    num_scans: int
    heldout_scans: int
    metadata: Path | None
    results: str = "results"


PROFILES = {
    "demo": Profile((DEMO_CONFIG,), DEMO_CONFIG, MODELS, None, 100, 20, METADATA),
    # demo_fast.yaml sets its own target_spacing (1.5 mm) and a shorter classifier
    "fast": Profile((DEMO_CONFIG, FAST_CONFIG), FAST_CONFIG, MODELS / "demo_fast", FAST_CONFIG, 70, 16, None),
    # cpu_long.yaml changes only training length, mining and checkpointing: make demo's scans and classifier
    "long": Profile(
        (DEMO_CONFIG, LONG_CONFIG), DEMO_CONFIG, MODELS / "cpu_long", None, 100, 20, None, "results_cpu_long"
    ),
}


def synth(raw: Path, num_scans: int, seed: int, size: str, domain: str, derived: list[Path], preview: Path) -> int:
    """Generate ``raw`` unless it already holds this generator's data; stale data (and ``derived``) is rebuilt."""
    if dataset_is_current(raw, num_scans, seed, size, domain=domain):
        logger.info("[demo] synth: %s holds the current %s-domain data, skipping", raw, domain)
        return 0
    if raw.exists():
        # an older generator version (or other settings) renders different scans: stale raw and processed data
        # would silently change the demo's results, so both are rebuilt
        logger.warning("[demo] synth: %s is not this generator's %d %s scans of seed %d; regenerating", raw,
                       num_scans, domain, seed)  # fmt: skip
        shutil.rmtree(raw)
        for path in derived:
            shutil.rmtree(path, ignore_errors=True)
    argv = ["synth", "--output-dir", str(raw), "--num-scans", str(num_scans), "--seed", str(seed), "--size", size]
    argv += ["--domain", domain, "--workers", "2", "--preview", str(preview)]
    logger.info("[demo] synth: pivot %s", " ".join(argv))
    return pivot(argv)


def run(work_dir: Path, num_scans: int, seed: int, heldout_scans: int, fpr: bool = True, profile: str = "demo") -> int:
    """Run the chain with the demo ``profile`` (a key of :data:`PROFILES`); returns the first failing exit code."""
    raw, processed, heldout = work_dir / "raw", work_dir / "processed", work_dir / "heldout_raw"
    chosen = PROFILES[profile]
    # training then checks the scans against the layered profile (pivot_monai.engines.validate.check_preprocessing)
    config = ["--config", str(chosen.preprocess)] if chosen.preprocess.exists() else []
    models = chosen.models
    checkpoint = models / "model.pt"
    code = synth(raw, num_scans, seed, TRAIN_SIZE, "train", [processed], work_dir / "preview_train.png")
    code = code or synth(
        heldout, heldout_scans, HELDOUT_SEED, "fullsize", "heldout", [], work_dir / "preview_heldout.png"
    )
    if code:
        logger.error("[demo] synthesis failed with exit code %d", code)
        return code
    steps = [
        ["preprocess", "--input-dir", str(raw), "--output-dir", str(processed), "--workers", "2", *config],
        ["split", "--data-dir", str(processed), "--seed", str(seed)],
    ]
    for argv in steps:
        logger.info("[demo] %s: pivot %s", argv[0], " ".join(argv))
        code = pivot(argv)
        if code:
            logger.error("[demo] step %s failed with exit code %d", argv[0], code)
            return code
    code = train(processed, list(chosen.layers), models)
    if code:
        return code
    if fpr:
        # the second stage learns the detector's own candidates on the training scans; pivot infer and evaluate then
        # use the fpr.pt beside model.pt by default (the fast profile's fpr section sets fewer epochs)
        argv = ["train-fpr", "--data-dir", str(processed / "train"), "--checkpoint", str(checkpoint)]
        argv += ["--config", str(chosen.fpr_config)] if chosen.fpr_config else []
        logger.info("[demo] train-fpr: pivot %s", " ".join(argv))
        code = pivot(argv)
        if code:
            logger.error("[demo] train-fpr failed with exit code %d", code)
            return code
    # model.pt describes itself (network, preprocessing, inference settings): no --config from here on
    return infer_and_evaluate(
        work_dir, processed, heldout, checkpoint, metadata=chosen.metadata, results=work_dir / chosen.results
    )


def infer_and_evaluate(
    work_dir: Path,
    processed: Path,
    heldout: Path,
    checkpoint: Path = MODELS / "model.pt",
    metadata: Path | None = METADATA,
    results: Path | None = None,
) -> int:
    """Infer on the raw test scans, evaluate both domains and print the cross-domain summary.

    ``metadata``: the bundle's ``metadata.json``, whose ``eval_metrics`` get these figures (None: left alone, for a
    model that is not the bundle's ``models/model.pt``). ``results``: the output folder (default
    ``work_dir/results``).
    """
    from pivot_monai.inference.crossdomain import domain_summary, format_domain_summaries
    from pivot_monai.inference.model_card import write_bundle_metrics

    results = results or work_dir / "results"
    test_raw = sorted(json.loads(m.read_text())["source"] for m in (processed / "test").glob("*/meta.json"))
    infer_args = ["infer", "--checkpoint", str(checkpoint), "--input", *test_raw, "--output", str(results / "infer")]
    code = pivot([*infer_args, "--save-previews"])
    if code:
        logger.error("[demo] inference failed with exit code %d", code)
        return code
    sets = {"train domain, test split": (processed / "test", results / "eval"),
            "held-out domain, fullsize": (heldout, results / "eval_heldout")}  # fmt: skip
    summaries = {}
    for name, (data_dir, out) in sets.items():
        eval_args = ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data_dir)]
        code = pivot([*eval_args, "--output-dir", str(out)])
        if code:
            logger.error("[demo] evaluation of %s failed with exit code %d", name, code)
            return code
        summaries[name] = domain_summary(out, data_dir)
    (results / "domains.json").write_text(json.dumps(summaries, indent=1) + "\n")
    if metadata is not None:  # the bundle's metadata.json carries the measured metrics of the model it ships
        write_bundle_metrics(metadata, {name: out / "metrics.json" for name, (_, out) in sets.items()})
    logger.info("[demo] summary\n%s", format_domain_summaries(summaries))
    logger.info(
        "[demo] outputs: model %s, candidates %s, metrics %s and %s, FROC plots %s and %s, previews %s",
        checkpoint,
        results / "infer" / "candidates.csv",
        results / "eval" / "metrics.json",
        results / "eval_heldout" / "metrics.json",
        results / "eval" / "froc.png",
        results / "eval_heldout" / "froc.png",
        results / "infer" / "previews",
    )
    return 0


def train(processed: Path, profile: list[Path], models: Path = MODELS) -> int:
    """Train with the real bundle command and the demo ``profile`` layered over train.yaml into ``models``; returns
    its exit code."""
    files = ",".join(f"'{f.as_posix()}'" for f in [Path("bundle/configs/train.yaml"), *profile])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"[{files}]"]
    cmd += ["--dataset_dir", str(processed)]
    if models != MODELS:
        cmd += ["--checkpointing#dir", str(models), "--logging#log_dir", str(models / "logs")]
    logger.info("[demo] train: %s", " ".join(cmd))
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    logger.info("[demo] training took %.1f min (exit code %d)", (time.perf_counter() - t0) / 60, code)
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("data/demo"), help="where the demo writes everything")
    p.add_argument("--num-scans", type=int, default=None, help="train-domain scans (default 100; --fast: 70)")
    p.add_argument(
        "--heldout-scans",
        type=int,
        default=None,
        help="fullsize held-out-domain scans, never trained on (20; --fast: 16)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--fast", dest="profile", action="store_const", const="fast", help="the 15-minute profile (demo_fast.yaml)"
    )
    which.add_argument(
        "--long", dest="profile", action="store_const", const="long", help="the CPU long profile (cpu_long.yaml)"
    )
    p.set_defaults(profile="demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the split")
    p.add_argument("--no-fpr", action="store_true", help="skip the false-positive-reduction classifier")
    args = p.parse_args(argv)
    if args.num_scans is None:
        args.num_scans = PROFILES[args.profile].num_scans
    if args.heldout_scans is None:
        args.heldout_scans = PROFILES[args.profile].heldout_scans
    return args


if __name__ == "__main__":
    from pivot_monai.cli import setup_logging

    setup_logging()
    args = parse_args()
    sys.exit(run(args.work_dir, args.num_scans, args.seed, args.heldout_scans, not args.no_fpr, args.profile))
