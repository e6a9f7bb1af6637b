"""``pivot classify`` and ``pivot train-fpr``: the false-positive-reduction stage's thin commands.

``pivot classify`` re-scores any LUNA16 candidates file (:func:`~pivot_monai.inference.fpr.classify_candidates`);
``pivot train-fpr`` trains the classifier on the detector's candidates
(:func:`~pivot_monai.inference.fpr_train.train_classifier`). Both read ``--config`` layered over ``train.yaml`` and
``bundle/configs/fpr.yaml`` (its ``data`` and ``fpr`` sections).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pivot_monai.cli.common import Command, add_config_argument

__all__ = ["COMMANDS", "add_fpr_arguments", "classifier_from_args", "run_classify", "run_train_fpr"]

logger = logging.getLogger("pivot_monai")


def add_fpr_arguments(p: argparse.ArgumentParser) -> None:
    """``--classifier`` and ``--no-fpr``, shared by ``pivot infer`` and ``pivot evaluate``."""
    p.add_argument(
        "--classifier", type=Path, default=None,
        help="false-positive-reduction classifier (fpr.pt); None = fpr.checkpoint of the config, else fpr.pt next "
        "to --checkpoint when it exists",
    )  # fmt: skip
    p.add_argument("--no-fpr", action="store_true", help="detector scores only: do not run the classifier")


def classifier_from_args(args: argparse.Namespace, detector: Path | None) -> Any:
    """The classifier ``pivot infer``/``pivot evaluate`` run (:func:`~pivot_monai.inference.fpr.resolve_classifier`):
    ``--classifier``, else ``fpr.checkpoint`` of ``--config``, else ``fpr.pt`` beside ``detector``; ``None`` with
    ``--no-fpr``, ``fpr.enabled: false`` or when there is none."""
    if args.no_fpr:
        return None
    from pivot_monai.inference.fpr import load_fpr_section, resolve_classifier

    return resolve_classifier(detector, load_fpr_section(args.config), args.classifier, device=_device(args.device))


def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot classify``."""
    p.add_argument(
        "--candidates", type=Path, required=True,
        help="LUNA16 candidates CSV: seriesuid,coordX,coordY,coordZ[,probability,...] (world mm)",
    )  # fmt: skip
    p.add_argument(
        "-i", "--input", type=Path, nargs="+", required=True,
        help="the scans the candidates are on: .mhd/.nii.gz files, DICOM folders, or folders of them",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder for candidates.csv (or a .csv file path)"
    )
    p.add_argument("--classifier", type=Path, default=None, help="classifier checkpoint; None = fpr.checkpoint")
    p.add_argument(
        "--fusion-weight", type=float, default=None,
        help="w of probability = detector^(1-w) * classifier^w; None = fpr.fusion_weight (files without a "
        "probability column get the classifier's own)",
    )  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the classifier runs")
    add_config_argument(p, "its data and fpr sections")


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def run_classify(args: argparse.Namespace) -> int:
    """``pivot classify``: 0 ok, 1 some scan failed (its candidates are left out)."""
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.inference.classify import classify_candidates
    from pivot_monai.inference.fpr import CandidateClassifier, load_fpr_config

    merged = load_fpr_config(args.config)
    section = merged["fpr"]
    path = args.classifier or section.get("checkpoint")
    if path is None:
        raise ValueError("pivot classify: pass --classifier fpr.pt (or set fpr.checkpoint in --config)")
    classifier = CandidateClassifier.load(path, _device(args.device))
    preprocess = PreprocessConfig.from_data_section(merged["data"])
    weight = args.fusion_weight if args.fusion_weight is not None else section.get("fusion_weight")
    report = classify_candidates(
        args.candidates, [str(p) for p in args.input], args.output, classifier, preprocess, weight
    )
    return 1 if report["failed"] else 0


def add_train_fpr_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot train-fpr``."""
    p.add_argument(
        "-i", "--data-dir", "--input", dest="data_dir", type=Path, required=True,
        help="training scans: a processed split (data/processed/train) or a raw folder with annotations.csv",
    )  # fmt: skip
    p.add_argument("--checkpoint", type=Path, default=None, help="the detector (model.pt) whose candidates it learns")
    p.add_argument(
        "--candidates", type=Path, default=None,
        help="the detector's candidates on --data-dir (CSV); None = run --checkpoint on the scans",
    )  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=None, help="classifier; None = fpr.pt beside --checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the networks run")
    add_config_argument(p, "its data/model/inference sections and the fpr section of bundle/configs/fpr.yaml")


def run_train_fpr(args: argparse.Namespace) -> int:
    """``pivot train-fpr``: 0 ok."""
    from pivot_monai.inference.fpr_train import train_classifier

    train_classifier(
        args.data_dir, args.output, candidates=args.candidates, detector=args.checkpoint, config=args.config,
        device=_device(args.device),
    )  # fmt: skip
    return 0


COMMANDS = (
    Command(
        "classify",
        "re-score a LUNA16 candidates file with the false-positive-reduction classifier",
        add_classify_arguments,
        run_classify,
    ),
    Command(
        "train-fpr",
        "train the false-positive-reduction classifier on the detector's candidates",
        add_train_fpr_arguments,
        run_train_fpr,
    ),
)
