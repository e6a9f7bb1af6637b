"""``pivot`` command line: one thin subcommand per pipeline stage, each wrapping a library function.

Subcommands: ``synth``, ``preprocess``, ``split`` (more are registered by later stages). ``pivot <cmd> --help``
lists every flag with its default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "setup_logging"]

logger = logging.getLogger("pivot_monai")

_Formatter = argparse.ArgumentDefaultsHelpFormatter


def setup_logging(verbose: bool = False) -> None:
    """One log format for every command (same as ``bundle/configs/logging.conf``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# ---------------------------------------------------------------------------------------------------- synth
def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, default=Path("data/raw"), help="dataset root to write (LUNA16 layout)")
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
        "--preview",
        type=Path,
        default=None,
        help="also write a PNG with axial/coronal/sagittal slices through a nodule",
    )


def run_synth(args: argparse.Namespace) -> int:
    from pivot_monai.data.synthetic import generate_dataset

    generate_dataset(
        args.output_dir,
        args.num_scans,
        seed=args.seed,
        size=args.size,
        domain=args.domain,
        workers=args.workers,
        report=args.report,
        preview=args.preview,
    )
    return 0


# ---------------------------------------------------------------------------------------------------- preprocess
def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-dir", type=Path, default=Path("data/raw"), help="raw dataset (subsetN/*.mhd + CSVs)")
    p.add_argument("--output-dir", type=Path, default=Path("data/processed"), help="processed dataset to write")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config whose `data` section sets spacing/window/crop; None means bundle/configs/train.yaml",
    )
    p.add_argument(
        "--annotations", type=Path, default=None, help="annotations.csv; None means the one found in the input dir"
    )
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--overwrite", action="store_true", help="redo scans that are already preprocessed")


def run_preprocess(args: argparse.Namespace) -> int:
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.data.raw_dataset import preprocess_dataset
    from pivot_monai.train_config import load_data_section

    cfg = PreprocessConfig.from_data_section(load_data_section(args.config))
    report = preprocess_dataset(
        args.input_dir,
        args.output_dir,
        cfg,
        workers=args.workers,
        overwrite=args.overwrite,
        annotations=args.annotations,
    )
    if report["failed"]:
        logger.error("%d scan(s) failed; see %s", len(report["failed"]), args.output_dir / "preprocess_report.json")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------- split
def add_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path("data/processed"), help="processed dataset")
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
    from pivot_monai.data.splits import create_splits

    create_splits(args.data_dir, args.train_ratio, args.val_ratio, args.test_ratio, seed=args.seed, fold=args.fold)
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from pivot_monai.train import add_train_arguments

    add_train_arguments(p)


def _run_train(args: argparse.Namespace) -> int:
    from pivot_monai.train import run_train

    return run_train(args)


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "synth": ("generate a synthetic LUNA16-style chest-CT dataset", add_synth_arguments, run_synth),
    "preprocess": ("resample, HU-window and lung-crop raw scans", add_preprocess_arguments, run_preprocess),
    "split": ("split a processed dataset into train/val/test", add_split_arguments, run_split),
    "train": (
        "train the detector (bundle workflow) from a minimal YAML merged over the defaults",
        _train_arguments,
        _run_train,
    ),
}


def _register_inference_commands() -> None:
    from pivot_monai.inference import commands as inf

    register("infer", "detect nodules in raw CT scans -> LUNA16 candidates.csv", inf.add_infer_arguments, inf.run_infer)
    register(
        "evaluate",
        "FROC/CPM and detection metrics on a test split or a raw LUNA16 folder",
        inf.add_evaluate_arguments,
        inf.run_evaluate,
    )
    register("export", "export a checkpoint to TorchScript or ONNX", inf.add_export_arguments, inf.run_export)


def register(name: str, help_text: str, add_arguments: Callable, run: Callable) -> None:
    """Register a subcommand (used by later pipeline stages)."""
    _COMMANDS[name] = (help_text, add_arguments, run)


def build_parser() -> argparse.ArgumentParser:
    _register_inference_commands()
    parser = argparse.ArgumentParser(
        prog="pivot", description="PIVOT lung-nodule detection pipeline", formatter_class=_Formatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pivot`` console script. Returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(_COMMANDS[args.command][2](args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
