"""``pivot train``: a thin wrapper of :func:`pivot_monai.train.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pivot_monai.cli.common import Command, add_config_argument

__all__ = ["COMMANDS", "run_train"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot train``."""
    add_config_argument(p, "the guide's Minimal Configuration")
    p.add_argument(
        "--experiment-name", default=None,
        help="runs go to <runs-dir>/<experiment-name>/<timestamp>/ (default: default); with a checkpointing.dir of "
        "the config's own, a sub-folder of it",
    )  # fmt: skip
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="root of the run folders")
    p.add_argument(
        "--export-to", type=Path, default=None,
        help="after training, write the run's model.pt there (self-describing), e.g. bundle/models/model.pt",
    )  # fmt: skip
    p.add_argument(
        "--base-config",
        type=Path,
        action="append",
        default=None,
        help="bundle config(s) to merge the user file over, in order (default: bundle train.yaml)",
    )
    p.add_argument("--bundle-root", default=None, help="override bundle_root (paths in the config are relative to it)")
    p.add_argument(
        "-i", "--input", "--dataset-dir", dest="input", default=None,
        help="override dataset_dir (the processed data root)",
    )  # fmt: skip
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const=True,
        default=None,
        help="continue the newest run of the experiment; an error if it has none (default: continue it when it "
        "holds a checkpoint, else start a new run)",
    )
    start.add_argument(
        "--restart",
        dest="resume",
        action="store_const",
        const=False,
        help="start a new run in a new folder (with a checkpointing.dir of the config's own, earlier checkpoints "
        "are moved to its previous_runs/)",
    )


def run_train(args: argparse.Namespace) -> int:
    """``pivot train``: 0 when training finished; 128 + signal after a graceful stop on SIGTERM/SIGINT (143, 130),
    with a checkpoint to resume from (:mod:`pivot_monai.handlers.graceful_stop`)."""
    from pivot_monai.train import train

    train(
        args.config,
        experiment_name=args.experiment_name,
        base_configs=args.base_config,
        bundle_root=args.bundle_root,
        dataset_dir=args.input,
        resume=args.resume,
        runs_dir=args.runs_dir,
        export_to=args.export_to,
    )
    return 0


COMMANDS = (
    Command(
        "train",
        "train the detector (bundle workflow) from a minimal YAML merged over the defaults",
        add_train_arguments,
        run_train,
    ),
)
