"""``pivot infer``, ``pivot evaluate`` and ``pivot export``: thin wrappers of the inference stage's functions.

Each builds one :class:`~pivot_monai.inference.settings.InferenceSettings` from what the model recorded, the keys
``--config`` sets and the flags (:func:`~pivot_monai.inference.model_settings.settings_for_model`; a model without a
description runs with ``--config`` merged over ``bundle/configs/train.yaml``), applies the host's tuning, and calls
the stage's function.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pivot_monai.cli.common import Command, add_config_argument
from pivot_monai.cli.fpr import add_fpr_arguments, classifier_from_args

__all__ = ["COMMANDS", "run_evaluate", "run_export", "run_infer", "settings_from_args"]

logger = logging.getLogger("pivot_monai")

_CONFIG_WHAT = "its data/model/inference/device sections"


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p, _CONFIG_WHAT)
    add_fpr_arguments(p)
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs; auto = cuda when available, else cpu",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="test-time augmentation (flips, averaged); None = inference.tta.enabled of the config (off)",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (autocast: device.amp_dtype on CUDA, bfloat16 on CPU); default: "
        "device.mixed_precision of the config on CUDA (on), off on CPU unless device.force_cpu_amp",
    )


def settings_from_args(args: argparse.Namespace, model: Any = None) -> Any:
    """The run's :class:`~pivot_monai.inference.settings.InferenceSettings` for ``model``, with the host's tuning
    applied."""
    from pivot_monai.inference.model_settings import settings_for_model

    settings = settings_for_model(
        model,
        args.config,
        device=args.device,
        tta=args.tta,
        overlap=getattr(args, "overlap", None),
        sw_batch_size=getattr(args, "sw_batch_size", None),
        amp=args.amp,
    )
    settings.host.apply()
    return settings


def _classifier(args: argparse.Namespace, model: Any) -> Any:
    """``--classifier``, ``fpr.checkpoint`` or ``fpr.pt`` beside the model, else the classifier inside the model."""
    if args.no_fpr:
        return None
    import torch

    from pivot_monai.inference.fpr import load_fpr_section
    from pivot_monai.inference.model_settings import embedded_classifier

    found = classifier_from_args(args, model)
    if found is not None:
        return found
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return embedded_classifier(model, load_fpr_section(args.config), device)


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot infer``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", type=Path, help="model.pt: describes itself (an older bare state_dict needs --config)"
    )
    src.add_argument("--model", type=Path, help="exported model: model.ts (TorchScript) or model.onnx")
    p.add_argument(
        "-i", "--input", type=Path, nargs="+", required=True,
        help="scans: .mhd/.nii.gz files, DICOM folders, or folders of them (searched recursively)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", "--output-dir", dest="output", type=Path, required=True,
        help="output folder for candidates.csv and infer_report.json",
    )  # fmt: skip
    _runtime_arguments(p)
    p.add_argument(
        "--overlap", type=float, default=None, help="sliding-window overlap in [0, 1); None = inference.overlap (0.25)"
    )
    p.add_argument(
        "--sw-batch-size", type=int, default=None, help="windows per forward pass; None = inference.sw_batch_size (2)"
    )
    p.add_argument(
        "--save-heatmap",
        action="store_true",
        help="also write <uid>_heatmap.nii.gz resampled onto the raw scan (overlay in Slicer/ITK-SNAP)",
    )
    p.add_argument(
        "--save-previews",
        action="store_true",
        help="also write previews/<uid>_<rank>.png (axial/coronal/sagittal, lung window) of top candidates",
    )
    p.add_argument("--num-previews", type=int, default=5, help="candidates previewed per scan with --save-previews")


def run_infer(args: argparse.Namespace) -> int:
    """``pivot infer``: 0 ok, 1 some scan failed."""
    from pivot_monai.inference.pipeline import REPORT_NAME, infer_scans

    model = args.checkpoint or args.model
    settings = settings_from_args(args, model)
    report = infer_scans(
        [str(p) for p in args.input],
        args.output,
        model,
        settings,
        save_heatmap=args.save_heatmap,
        save_previews=args.save_previews,
        num_previews=args.num_previews,
        classifier=_classifier(args, model),
    )
    if report["failed"]:
        logger.error(
            "%d of %d scan(s) failed; see %s", len(report["failed"]), report["n_scans"], Path(args.output) / REPORT_NAME
        )
        return 1
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot evaluate``."""
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="model.pt, .ts or .onnx (an older bare state_dict needs --config)",
    )
    p.add_argument(
        "-i", "--input", "--data-dir", dest="input", type=Path, required=True,
        help="processed split (e.g. data/processed/test) or raw folder with annotations.csv",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", "--output-dir", dest="output", type=Path, required=True,
        help="folder for metrics.json, froc.png, candidates.csv, per_nodule.csv",
    )  # fmt: skip
    _runtime_arguments(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="scan-level bootstrap resamples for 95%% CIs (0: off)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="operating probability for center accuracy, size error, malignancy AUC and detection Dice",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """``pivot evaluate``: 0 ok, 1 some scan failed (left out of the metrics)."""
    from pivot_monai.inference.evaluate import evaluate

    settings = settings_from_args(args, args.checkpoint)
    metrics = evaluate(
        args.checkpoint,
        args.input,
        args.output,
        settings,
        bootstrap=args.bootstrap,
        seed=args.seed,
        threshold=args.threshold,
        classifier=_classifier(args, args.checkpoint),
    )
    if metrics["n_failed"]:
        logger.error(
            "%d scan(s) failed and were left out of the metrics; see %s",
            metrics["n_failed"],
            Path(args.output) / "metrics.json",
        )
        return 1
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot export``."""
    p.add_argument(
        "-i", "--input", "--checkpoint", dest="input", type=Path, required=True,
        help="training checkpoint (model.pt)",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("torchscript", "onnx", "checkpoint"), required=True,
        help="export format; checkpoint: a self-describing model.pt (e.g. to publish a run's model)",
    )  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write, e.g. model.ts or model.onnx")
    add_config_argument(p, "only for an older bare state_dict: its model section builds the network")
    p.add_argument(
        "--classifier", type=Path, default=None,
        help="false-positive-reduction classifier to put inside the export; None = the one in or beside --input",
    )  # fmt: skip
    p.add_argument("--no-fpr", action="store_true", help="export the detector alone")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=None,
        help="example input size X Y Z for tracing/verification; None = data.patch_size of the config (64 64 64)",
    )


def run_export(args: argparse.Namespace) -> int:
    """``pivot export``: 0 ok, 1 the export does not reproduce the eager network."""
    from pivot_monai.inference.export import ExportError, export_model
    from pivot_monai.inference.model_settings import sections_for_model

    cfg, _ = sections_for_model(args.input, args.config)
    patch = args.patch_size or cfg["data"].get("patch_size", [64, 64, 64])
    kwargs: dict[str, Any] = {"opset": args.opset} if args.format == "onnx" else {}
    classifier = False if args.no_fpr else args.classifier
    try:
        export_model(
            args.input, cfg["model"], args.output, args.format, patch, sections=cfg, classifier=classifier, **kwargs
        )
    except ExportError as err:
        logger.error("%s", err)
        return 1
    return 0


COMMANDS = (
    Command("infer", "detect nodules in raw CT scans -> LUNA16 candidates.csv", add_infer_arguments, run_infer),
    Command(
        "evaluate",
        "FROC/CPM and detection metrics on a test split or a raw LUNA16 folder",
        add_evaluate_arguments,
        run_evaluate,
    ),
    Command("export", "export a checkpoint to TorchScript or ONNX", add_export_arguments, run_export),
)
