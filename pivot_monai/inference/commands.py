"""Thin argparse wrappers of the inference stage: ``pivot infer``, ``pivot evaluate`` and ``pivot export``.

Each ``add_*_arguments`` fills a parser and each ``run_*`` returns the exit code: 0 ok, 1 some scan failed,
2 bad arguments or config (the error is logged). Config sections (``data``, ``model``, ``inference``) come from
``--config`` deep-merged over ``bundle/configs/train.yaml``, so a minimal user YAML (as for ``pivot train``) works.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivot_monai.config import ConfigKeyError, deep_merge
from pivot_monai.train_config import load_section

__all__ = [
    "add_evaluate_arguments",
    "add_export_arguments",
    "add_infer_arguments",
    "config_sections",
    "run_evaluate",
    "run_export",
    "run_infer",
]

logger = logging.getLogger("pivot_monai")

_BAD_INPUT = (ValueError, TypeError, FileNotFoundError, KeyError, ImportError, ConfigKeyError)
_CONFIG_HELP = (
    "YAML whose data/model/inference/device sections are merged over the defaults; None = bundle/configs/train.yaml"
)


def config_sections(config: str | Path | None) -> dict[str, dict[str, Any]]:
    """The ``data``, ``model``, ``inference`` and ``device`` sections: ``config`` deep-merged over ``train.yaml``."""
    out = {}
    for name in ("data", "model", "inference", "device"):
        section = load_section(name)
        if config is not None:
            section = deep_merge(section, load_section(name, config))
        out[name] = section
    return out


def _auto_device(value: str) -> Any:
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _guarded(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except _BAD_INPUT as err:
        logger.error("%s", err)
        return 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
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


# ---------------------------------------------------------------------------------------------------- infer
def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot infer``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="training checkpoint (model.pt) built with the config's model")
    src.add_argument("--model", type=Path, help="exported model: model.ts (TorchScript) or model.onnx")
    p.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="scans: .mhd/.nii.gz files, DICOM folders, or folders of them (searched recursively)",
    )
    p.add_argument("--output", type=Path, required=True, help="output folder for candidates.csv and infer_report.json")
    _common(p)
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap in [0, 1); None = inference.overlap of the config (0.25)",
    )
    p.add_argument(
        "--sw-batch-size",
        type=int,
        default=None,
        help="windows per forward pass; None = inference.sw_batch_size of the config (2)",
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


def _infer(args: argparse.Namespace) -> int:
    from pivot_monai.engines.runtime import apply_host_settings
    from pivot_monai.inference.pipeline import REPORT_NAME, infer_scans

    cfg = config_sections(args.config)
    apply_host_settings(cfg["device"])
    report = infer_scans(
        [str(p) for p in args.input],
        args.output,
        args.checkpoint or args.model,
        data=cfg["data"],
        model_cfg=cfg["model"],
        inference=cfg["inference"],
        device=_auto_device(args.device),
        tta=args.tta,
        device_cfg=cfg["device"],
        amp=args.amp,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        save_heatmap=args.save_heatmap,
        save_previews=args.save_previews,
        num_previews=args.num_previews,
    )
    if report["failed"]:
        logger.error(
            "%d of %d scan(s) failed; see %s", len(report["failed"]), report["n_scans"], Path(args.output) / REPORT_NAME
        )
        return 1
    return 0


def run_infer(args: argparse.Namespace) -> int:
    """``pivot infer``: 0 ok, 1 some scan failed, 2 bad arguments/config."""
    return _guarded(_infer, args)


# ---------------------------------------------------------------------------------------------------- evaluate
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot evaluate``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt (with the config's model), .ts or .onnx")
    p.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="processed split (e.g. data/processed/test) or raw folder with annotations.csv",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="folder for metrics.json, froc.png, candidates.csv, per_nodule.csv",
    )
    _common(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="scan-level bootstrap resamples for 95%% CIs (0: off)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="operating probability for center accuracy, size error, malignancy AUC and detection Dice",
    )


def _evaluate(args: argparse.Namespace) -> int:
    from pivot_monai.engines.runtime import apply_host_settings
    from pivot_monai.inference.evaluate import evaluate

    cfg = config_sections(args.config)
    apply_host_settings(cfg["device"])
    metrics = evaluate(
        args.checkpoint,
        args.data_dir,
        args.output_dir,
        data=cfg["data"],
        model_cfg=cfg["model"],
        inference=cfg["inference"],
        device=_auto_device(args.device),
        tta=args.tta,
        device_cfg=cfg["device"],
        amp=args.amp,
        bootstrap=args.bootstrap,
        seed=args.seed,
        threshold=args.threshold,
    )
    if metrics["n_failed"]:
        logger.error(
            "%d scan(s) failed and were left out of the metrics; see %s",
            metrics["n_failed"],
            Path(args.output_dir) / "metrics.json",
        )
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``pivot evaluate``: 0 ok, 1 some scan failed, 2 bad arguments/config."""
    return _guarded(_evaluate, args)


# ---------------------------------------------------------------------------------------------------- export
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot export``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (model.pt)")
    p.add_argument("--format", choices=("torchscript", "onnx"), required=True, help="export format")
    p.add_argument("--output", type=Path, required=True, help="file to write, e.g. model.ts or model.onnx")
    p.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=None,
        help="example input size X Y Z for tracing/verification; None = data.patch_size of the config (64 64 64)",
    )


def _export(args: argparse.Namespace) -> int:
    from pivot_monai.inference.export import ExportError, export_onnx, export_torchscript

    cfg = config_sections(args.config)
    patch = args.patch_size or cfg["data"].get("patch_size", [64, 64, 64])
    try:
        if args.format == "onnx":
            export_onnx(args.checkpoint, cfg["model"], args.output, patch, opset=args.opset)
        else:
            export_torchscript(args.checkpoint, cfg["model"], args.output, patch)
    except ExportError as err:
        logger.error("%s", err)
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``pivot export``: 0 ok, 1 the export does not reproduce eager, 2 bad arguments/config."""
    return _guarded(_export, args)
