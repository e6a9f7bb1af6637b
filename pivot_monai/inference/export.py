"""Export a trained detector to TorchScript or ONNX, verified against the eager network.

Both exports are of the **eval-mode** network, so they emit probabilities (heatmap, malignancy) and mm (diameter),
exactly like :class:`~pivot_monai.networks.PivotDetector` in eval mode.

* TorchScript (``.ts``): ``torch.jit.script`` (falls back to ``torch.jit.trace`` for unscriptable custom networks);
  the output is the same dict. Loadable with ``torch.jit.load`` alone.
* ONNX (``.onnx``, opset 17): input ``image`` (B, 1, X, Y, Z) and outputs ``heatmap``, ``diameter``, ``malignancy``
  in that order, with dynamic batch and spatial axes. Verified with onnxruntime.

* checkpoint (``.pt``): a self-describing ``model.pt`` (the explicit step that publishes a run's model, e.g.
  ``pivot train --export-to bundle/models/model.pt``).

Every export carries the model's description (:mod:`pivot_monai.networks.metadata`): the source checkpoint's own,
or one built from the ``model_cfg``/``sections`` given for a bare ``state_dict``, so ``pivot infer --model
model.ts`` needs no config. The false-positive-reduction classifier (``fpr.pt`` beside the source checkpoint, one
embedded in it, or ``classifier=``) travels inside the file: ``"fpr"`` in a checkpoint, the extra file ``fpr.pt``
in TorchScript, the ``pivot.fpr`` metadata entry in ONNX.

The MONAI bundle route gives a TorchScript file with the bundle's metadata and config embedded, its maps stacked as
channels (:class:`~pivot_monai.networks.stacked.StackedOutputs`), which ``pivot infer --model`` reads as well::

    python -m monai.bundle ckpt_export network_def --filepath bundle/models/model.ts \\
        --ckpt_file bundle/models/model.pt --checkpoint bundle/models/model.pt \\
        --meta_file bundle/configs/metadata.json \\
        --config_file "['bundle/configs/train.yaml','bundle/configs/inference.yaml']"
"""

from __future__ import annotations

import base64
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.utils import optional_import

from pivot_monai.files import atomic_output_path
from pivot_monai.networks import OUTPUT_KEYS
from pivot_monai.networks.checkpoint import load_model, save_model
from pivot_monai.networks.metadata import (
    ATTRIBUTE,
    METADATA_KEY,
    ONNX_CLASSIFIER_KEY,
    TORCHSCRIPT_CLASSIFIER_FILE,
    TORCHSCRIPT_FILE,
    classifier_bytes,
    describe_model,
    read_classifier_state,
    read_metadata,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "export_checkpoint",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "model_description",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx", "checkpoint")
_CLASSIFIER_NAME = "fpr.pt"  # inference.fpr.CLASSIFIER_NAME, without importing the FP-reduction stage
_TOLERANCE = 1e-4
_HINT = "pip install onnx onnxruntime (or pip install 'pivot-monai[export]')"


class ExportError(RuntimeError):
    """The exported model does not reproduce the eager network within tolerance."""


class _TupleOutputs(nn.Module):
    """The network with its dict output as a tuple in :data:`OUTPUT_KEYS` order (ONNX needs positional outputs)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.network(x)
        return out["heatmap"], out["diameter"], out["malignancy"]


def _eager(checkpoint: str | Path | nn.Module, model_cfg: Mapping[str, Any] | None) -> nn.Module:
    net = load_model(checkpoint, model_cfg, "cpu", channels_last=False)  # the trained modules, as they are
    if not isinstance(net, nn.Module) or isinstance(net, torch.jit.ScriptModule):
        raise ValueError(f"{checkpoint}: export needs a training checkpoint (.pt) or an eager nn.Module")
    return net.eval()


def _classifier(checkpoint: Any, classifier: str | Path | bool | None) -> dict[str, Any] | None:
    """The classifier checkpoint to embed: ``classifier`` (a ``fpr.pt``), else one inside ``checkpoint``, else the
    ``fpr.pt`` beside it; ``False``: none."""
    if classifier is False:
        return None
    if classifier not in (None, True):
        path = Path(classifier)  # type: ignore[arg-type]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: classifier checkpoint not found (write one with `pivot train-fpr`)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or not {"model", "network", "patches"} <= set(state):
            raise ValueError(f"{path}: not a candidate-classifier checkpoint (expected keys model, network, patches)")
        return dict(state)
    if not isinstance(checkpoint, (str, Path)):
        return None
    inside = read_classifier_state(checkpoint)
    if inside is not None:
        return inside
    sibling = Path(checkpoint).with_name(_CLASSIFIER_NAME)
    return _classifier(checkpoint, sibling) if sibling.is_file() else None


def model_description(
    checkpoint: Any,
    model_cfg: Mapping[str, Any] | None,
    patch_size: Sequence[int] | None = None,
    sections: Mapping[str, Any] | None = None,
    classifier: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The description an export writes: the checkpoint's own, else one of ``sections`` (or ``model_cfg`` and
    ``patch_size``); ``fpr`` describes ``classifier`` when one is embedded."""
    meta = read_metadata(checkpoint) if isinstance(checkpoint, (str, Path)) else None
    if meta is None:
        given = dict(sections or {})
        given.setdefault("model", dict(model_cfg or {}))
        data = dict(given.get("data") or {})
        if patch_size is not None:
            data.setdefault("patch_size", [int(v) for v in patch_size])
        given["data"] = data
        meta = describe_model(given)
    if classifier is not None:
        meta["fpr"] = {
            "network": dict(classifier["network"]), "fov_mm": list(classifier["patches"]["fov_mm"]),
            "grid": int(classifier["patches"]["grid"]), "fusion_weight": classifier.get("fusion_weight"),
            "detector": classifier.get("detector"),
        }  # fmt: skip
    return meta


def _example(patch_size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    if len(patch_size) != 3:
        raise ValueError(f"patch_size must be 3 voxel counts (data.patch_size), got {list(patch_size)}")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *(int(v) for v in patch_size), generator=gen)


def _compare(reference: Mapping[str, torch.Tensor], outputs: Mapping[str, Any], atol: float, what: str) -> float:
    worst = 0.0
    for key in OUTPUT_KEYS:
        ref = reference[key].detach().cpu().numpy()
        value = outputs[key]
        got = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if ref.shape != got.shape:
            raise ExportError(f"{what}: output {key!r} has shape {got.shape}, eager gives {ref.shape}")
        worst = max(worst, float(np.max(np.abs(ref - got))))
    if worst > atol:
        raise ExportError(f"{what}: outputs differ from eager by {worst:.3g} (> {atol:g}); the export is not faithful")
    return worst


def export_torchscript(
    checkpoint: str | Path | nn.Module,
    model_cfg: Mapping[str, Any] | None,
    out_path: str | Path,
    patch_size: Sequence[int] = (64, 64, 64),
    *,
    method: str = "script",
    atol: float = _TOLERANCE,
    sections: Mapping[str, Any] | None = None,
    classifier: str | Path | bool | None = None,
) -> Path:
    """Export the eval-mode network to TorchScript and check it reproduces eager within ``atol``.

    Args:
        checkpoint: training checkpoint ``.pt`` or an ``nn.Module``.
        model_cfg: the ``model`` config section the checkpoint was trained with.
        out_path: ``.ts`` file to write (parent folders created).
        patch_size: (X, Y, Z) input used for tracing and verification (``data.patch_size``). Default 64^3.
        method: ``script`` (default; falls back to ``trace`` when scripting fails) or ``trace``.
        atol: largest allowed absolute difference to eager. Default 1e-4.
        sections: the config a bare ``state_dict`` was trained with, for its description. Default None.
        classifier: the ``fpr.pt`` to embed; ``None``: the one in or beside ``checkpoint``; ``False``: none.

    Returns:
        ``out_path``.

    Raises:
        ExportError: the saved model's outputs differ from eager by more than ``atol``.
    """
    if method not in ("script", "trace"):
        raise ValueError(f"method must be 'script' or 'trace', got {method!r}")
    net, x = _eager(checkpoint, model_cfg), _example(patch_size)
    fpr = _classifier(checkpoint, classifier)
    meta = model_description(checkpoint, model_cfg, patch_size, sections, fpr)
    setattr(net, ATTRIBUTE, json.dumps(meta))  # a string attribute the scripted module keeps
    ts = None
    if method == "script":
        try:
            ts = torch.jit.script(net)
        except Exception as err:  # noqa: BLE001 - TorchScript raises many error types
            logger.warning("torch.jit.script failed (%s); tracing at %s", str(err).splitlines()[0], list(x.shape))
    if ts is None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ts = torch.jit.trace(net, x, strict=False)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {TORCHSCRIPT_FILE: json.dumps(meta)}
    if fpr is not None:
        extra[TORCHSCRIPT_CLASSIFIER_FILE] = classifier_bytes(fpr)
    # written beside the target, checked, then renamed: a kill or a failed check leaves the previous file
    with atomic_output_path(path) as tmp:
        torch.jit.save(ts, str(tmp), _extra_files=extra)
        with torch.no_grad():
            diff = _compare(net(x), torch.jit.load(str(tmp))(x), atol, str(path))
    logger.info("TorchScript model written to %s (max |diff| to eager %.2g)", path, diff)
    return path


def export_onnx(
    checkpoint: str | Path | nn.Module,
    model_cfg: Mapping[str, Any] | None,
    out_path: str | Path,
    patch_size: Sequence[int] = (64, 64, 64),
    opset: int = 17,
    *,
    atol: float = _TOLERANCE,
    sections: Mapping[str, Any] | None = None,
    classifier: str | Path | bool | None = None,
) -> Path:
    """Export the eval-mode network to ONNX (dynamic batch/spatial axes) and verify it with onnxruntime.

    Verification runs the patch and a second shape (first spatial axis doubled, batch 2) to exercise the dynamic axes.

    Args:
        checkpoint: training checkpoint ``.pt`` or an ``nn.Module``.
        model_cfg: the ``model`` config section the checkpoint was trained with.
        out_path: ``.onnx`` file to write (parent folders created).
        patch_size: (X, Y, Z) example input (``data.patch_size``). Default 64^3.
        opset: ONNX opset. Default 17.
        atol: largest allowed absolute difference to eager. Default 1e-4.
        sections: the config a bare ``state_dict`` was trained with, for its description. Default None.
        classifier: the ``fpr.pt`` to embed; ``None``: the one in or beside ``checkpoint``; ``False``: none.

    Returns:
        ``out_path``.

    Raises:
        ImportError: onnxruntime is missing (install hint in the message).
        ExportError: onnxruntime's outputs differ from eager by more than ``atol``.
    """
    ort, has_ort = optional_import("onnxruntime")
    if not has_ort:
        raise ImportError(f"ONNX export is verified with onnxruntime: {_HINT}")
    net, x = _eager(checkpoint, model_cfg), _example(patch_size)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spatial = {0: "batch", 2: "x", 3: "y", 4: "z"}
    dynamic = {"image": spatial, **{k: {0: "batch", 2: "out_x", 3: "out_y", 4: "out_z"} for k in OUTPUT_KEYS}}
    wrapper = _TupleOutputs(net).eval()
    fpr = _classifier(checkpoint, classifier)
    # as for TorchScript: written beside the target and checked there; the previous file stays until it passes
    with atomic_output_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter warns about its own deprecation
            torch.onnx.export(
                wrapper,
                (x,),
                str(tmp),
                input_names=["image"],
                output_names=list(OUTPUT_KEYS),
                opset_version=int(opset),
                dynamic_axes=dynamic,
                dynamo=False,
            )
        _add_onnx_metadata(tmp, model_description(checkpoint, model_cfg, patch_size, sections, fpr), fpr)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = 0.0
        for example in (x, _example((2 * x.shape[2], *x.shape[3:]), batch=2, seed=1)):
            outputs = dict(zip(OUTPUT_KEYS, session.run(list(OUTPUT_KEYS), {"image": example.numpy()})))
            with torch.no_grad():
                diff = max(diff, _compare(net(example), outputs, atol, f"{path} at input {list(example.shape)}"))
    logger.info("ONNX model (opset %d) written to %s (max |diff| to eager %.2g)", opset, path, diff)
    return path


def _add_onnx_metadata(path: Path, meta: Mapping[str, Any], fpr: Mapping[str, Any] | None) -> None:
    """Store the description (and the classifier) in the ONNX file's ``metadata_props``."""
    onnx, has_onnx = optional_import("onnx")
    if not has_onnx:
        raise ImportError(f"writing the model's description into {path} needs onnx: {_HINT}")
    model = onnx.load(str(path))
    props = {METADATA_KEY: json.dumps(meta)}
    if fpr is not None:
        props[ONNX_CLASSIFIER_KEY] = base64.b64encode(classifier_bytes(fpr)).decode("ascii")
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_checkpoint(
    checkpoint: str | Path | nn.Module,
    model_cfg: Mapping[str, Any] | None,
    out_path: str | Path,
    patch_size: Sequence[int] | None = None,
    *,
    sections: Mapping[str, Any] | None = None,
    classifier: str | Path | bool | None = None,
) -> Path:
    """Write a self-describing ``model.pt`` of ``checkpoint`` (``{"model", "pivot"[, "fpr"]}``), atomically.

    The weights are checked by loading them into the network they describe. ``out_path`` may be ``checkpoint``
    itself (e.g. to embed the ``fpr.pt`` trained after it).

    Args:
        checkpoint: a training checkpoint (self-describing or a bare ``state_dict``) or an ``nn.Module``.
        model_cfg: the ``model`` section of a bare ``state_dict``; ``None`` for a self-describing checkpoint.
        out_path: the ``.pt`` file to write.
        patch_size: ``data.patch_size`` of a bare ``state_dict``, for its description. Default None.
        sections: the config a bare ``state_dict`` was trained with, for its description. Default None.
        classifier: the ``fpr.pt`` to embed; ``None``: the one in or beside ``checkpoint``; ``False``: none.

    Returns:
        ``out_path``.
    """
    net = _eager(checkpoint, model_cfg)
    fpr = _classifier(checkpoint, classifier)
    meta = model_description(checkpoint, model_cfg, patch_size, sections, fpr)
    path = save_model(out_path, net.state_dict(), meta, fpr)
    logger.info("model written to %s%s", path, " with its false-positive-reduction classifier" if fpr else "")
    return path


def export_model(
    checkpoint: str | Path | nn.Module,
    model_cfg: Mapping[str, Any] | None,
    out_path: str | Path,
    fmt: str,
    patch_size: Sequence[int] = (64, 64, 64),
    **kwargs: Any,
) -> Path:
    """:func:`export_torchscript`, :func:`export_onnx` or :func:`export_checkpoint` by ``fmt`` (one of
    :data:`EXPORT_FORMATS`)."""
    if fmt == "checkpoint":
        kwargs.pop("opset", None)
        return export_checkpoint(checkpoint, model_cfg, out_path, patch_size, **kwargs)
    if fmt == "torchscript":
        return export_torchscript(checkpoint, model_cfg, out_path, patch_size, **kwargs)
    if fmt == "onnx":
        return export_onnx(checkpoint, model_cfg, out_path, patch_size, **kwargs)
    raise ValueError(f"export format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
