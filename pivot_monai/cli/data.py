"""``pivot synth``, ``pivot preprocess`` and ``pivot split``: thin wrappers of the data stage's functions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pivot_monai.cli.common import Command, add_config_argument

__all__ = ["COMMANDS", "run_preprocess", "run_split", "run_synth"]

logger = logging.getLogger("pivot_monai")


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot synth``."""
    p.add_argument(
        "-o", "--output", "--output-dir", dest="output", type=Path, default=Path("data/raw"),
        help="dataset root to write (LUNA16 layout)",
    )  # fmt: skip
    p.add_argument("--num-scans", type=int, default=10, help="number of scans")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    p.add_argument(
        "--size",
        choices=("small", "medium", "fullsize"),
        default="small",
        help="small: tiny fast scans for tests; medium: ~1.1 mm in-plane; fullsize: 512x512 in-plane like real CT",
    )
    p.add_argument(
        "--domain",
        choices=("train", "heldout"),
        default="train",
        help="generator domain: train, or the disjoint held-out domain used only for validation",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument(
        "--report",
        action="store_true",
        help="measure the scans and print the realism report (published real-CT ranges next to ours)",
    )
    p.add_argument(
        "--preview", type=Path, default=None, help="also write a PNG of axial/coronal/sagittal slices through a nodule"
    )


def run_synth(args: argparse.Namespace) -> int:
    """``pivot synth``: :func:`~pivot_monai.data.synthetic.generate_dataset`."""
    from pivot_monai.data.synthetic import generate_dataset

    generate_dataset(
        args.output,
        args.num_scans,
        seed=args.seed,
        size=args.size,
        domain=args.domain,
        workers=args.workers,
        report=args.report,
        preview=args.preview,
    )
    return 0


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot preprocess``."""
    p.add_argument(
        "-i", "--input", "--input-dir", dest="input", type=Path, default=Path("data/raw"),
        help="raw dataset (subsetN/*.mhd + CSVs)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", "--output-dir", dest="output", type=Path, default=Path("data/processed"),
        help="processed dataset to write",
    )  # fmt: skip
    add_config_argument(p, "its data section sets spacing/window/crop")
    p.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="annotations.csv (default: the config's data.annotations, else the one found in the input dir)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--overwrite", action="store_true", help="redo scans that are already preprocessed")


def run_preprocess(args: argparse.Namespace) -> int:
    """``pivot preprocess``: :func:`~pivot_monai.data.raw_dataset.preprocess_dataset`; 1 when a scan failed."""
    from pivot_monai.config import load_section
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.data.raw_dataset import preprocess_dataset

    data = load_section("data", args.config)
    cfg = PreprocessConfig.from_data_section(data)
    annotations = args.annotations or data.get("annotations")  # --annotations, else the config's data.annotations
    report = preprocess_dataset(
        args.input, args.output, cfg, workers=args.workers, overwrite=args.overwrite, annotations=annotations
    )
    if report["failed"]:
        logger.error("%d scan(s) failed; see %s", len(report["failed"]), args.output / "preprocess_report.json")
        return 1
    return 0


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot split``."""
    p.add_argument(
        "-i", "--input", "--data-dir", dest="input", type=Path, default=Path("data/processed"),
        help="processed dataset; train/, val/, test/ and datalist.json are written into it",
    )  # fmt: skip
    p.add_argument("--train-ratio", type=float, default=0.7, help="fraction of scans for training")
    p.add_argument("--val-ratio", type=float, default=0.15, help="fraction of scans for validation")
    p.add_argument("--test-ratio", type=float, default=0.15, help="fraction of scans for testing")
    p.add_argument("--seed", type=int, default=42, help="shuffling seed")
    p.add_argument(
        "--fold",
        type=int,
        default=None,
        help="LUNA16 fold: test = subset<FOLD> (sorted subset order), the rest split into train/val",
    )


def run_split(args: argparse.Namespace) -> int:
    """``pivot split``: :func:`~pivot_monai.data.splits.create_splits`."""
    from pivot_monai.data.splits import create_splits

    create_splits(args.input, args.train_ratio, args.val_ratio, args.test_ratio, seed=args.seed, fold=args.fold)
    return 0


COMMANDS = (
    Command("synth", "generate a synthetic LUNA16-style chest-CT dataset", add_synth_arguments, run_synth),
    Command("preprocess", "resample, HU-window and lung-crop raw scans", add_preprocess_arguments, run_preprocess),
    Command("split", "split a processed dataset into train/val/test", add_split_arguments, run_split),
)
