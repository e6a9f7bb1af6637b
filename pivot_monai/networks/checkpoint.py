"""Loading a trained detector: training checkpoints, TorchScript archives and ONNX files.

:func:`load_model` picks the loader by suffix:

* a training checkpoint ``model.pt``: ``{"model": state_dict, "pivot": description}`` as training writes it
  (:mod:`pivot_monai.networks.metadata`), whose ``model`` section builds the network; or a bare ``state_dict`` (or
  ``{"model": state_dict}``) of an earlier run, with the ``model`` config section it was trained with (or an already
  built network to load it into);
* a TorchScript file ``model.ts`` (``torch.jit.load``; no PIVOT training code needed);
* an ONNX file ``model.onnx`` run by onnxruntime (:class:`OnnxModel`: outputs mapped back to ``heatmap``,
  ``diameter``, ``malignancy``).

:func:`save_model` writes a self-describing ``model.pt``. Nothing here imports the inference stage; the predictor
(:mod:`pivot_monai.inference.predictor`) and transfer learning (:mod:`pivot_monai.networks.transfer`) both load
weights through this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.utils import optional_import

from pivot_monai.files import atomic_save
from pivot_monai.networks.detector import OUTPUT_KEYS
from pivot_monai.networks.factory import build_network
from pivot_monai.networks.metadata import ATTRIBUTE, CLASSIFIER_KEY, METADATA_KEY, jsonable, read_metadata

__all__ = [
    "ONNX_SUFFIXES",
    "TORCHSCRIPT_SUFFIXES",
    "OnnxModel",
    "build_for_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_state_dict",
    "model_contradictions",
    "resolve_device",
    "save_model",
]

logger = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)
_WRAPPER_KEYS = ("model", "state_dict", "network")
_ORT_HINT = "pip install onnxruntime (or pip install 'pivot-monai[export]')"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``torch.device`` for ``device`` (default CPU); an unavailable CUDA device falls back to CPU with a warning.

    Raises:
        ValueError: an unparsable device string.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available; running on CPU", dev)
        return torch.device("cpu")
    return dev


def load_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The network ``state_dict`` stored in ``checkpoint`` (bare, or wrapped as ``{"model": ...}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint holding a state dict.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected the model.pt written by training)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: checkpoint is empty (0 bytes; an interrupted save?); use another model.pt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        first = (str(err).strip().splitlines() or [""])[0][:200]
        if (
            "weights_only" in first or "Weights only load failed" in first
        ):  # never repeat "retry with weights_only=False"
            first = "it holds objects other than tensors (not a PIVOT model.pt; untrusted files are never unpickled)"
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first}); "
            f"pass a .ts file with --model for TorchScript, .onnx for ONNX"
        ) from err
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a network state_dict (or {{'model': state_dict}}), got {type(obj).__name__}"
        )
    return dict(obj)


def save_model(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    classifier: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``model.pt`` atomically: ``{"model": state_dict, "pivot": metadata[, "fpr": classifier]}``.

    Args:
        path: the file to write (parent folders created).
        state_dict: the network's weights (moved to the CPU).
        metadata: the model's description (:func:`~pivot_monai.networks.metadata.describe_model`); ``None`` writes
            the bare ``state_dict`` (no description).
        classifier: the false-positive-reduction classifier checkpoint (``fpr.pt``'s mapping) to embed, or ``None``.

    Returns:
        ``path``.
    """
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    if metadata is None and classifier is None:
        obj: Any = weights
    else:
        obj = {"model": weights, METADATA_KEY: jsonable(dict(metadata or {}))}
        if classifier is not None:
            obj[CLASSIFIER_KEY] = dict(classifier)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(obj, p)


def model_contradictions(
    config: Mapping[str, Any] | None, recorded: Mapping[str, Any], section: str = "model"
) -> list[str]:
    """The keys of a config section that contradict what a model recorded, as ``"model.depth: 4 (config) vs 3
    (model)"``; keys only one of them has are not compared."""
    out = []
    for key, value in dict(config or {}).items():
        if key in recorded and jsonable(value) != jsonable(recorded[key]):
            out.append(f"{section}.{key}: {jsonable(value)!r} (config) vs {jsonable(recorded[key])!r} (model)")
    return out


def load_checkpoint(network: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load ``checkpoint`` into ``network`` (strictly) and return it in eval mode.

    Raises:
        ValueError: the weights do not fit the network; the message names the file and the first mismatches.
    """
    state = load_state_dict(checkpoint)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ValueError(
            f"{checkpoint}: weights do not match the network built from the `model` config ({detail}); use the "
            f"model section the checkpoint was trained with (--config, or model#base_filters/depth/output_stride)"
        ) from err
    return network.eval()


class OnnxModel:
    """An ONNX detector run by onnxruntime, called like the PyTorch network.

    Args:
        path: ``.onnx`` file.
        device: ``cuda`` uses the CUDA execution provider when onnxruntime has it. Default CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: onnxruntime cannot load it.
    """

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        ort, has_ort = optional_import("onnxruntime")
        if not has_ort:
            raise ImportError(f"running {path} needs onnxruntime: {_ORT_HINT}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({err})") from err
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.stacked = False
        if set(OUTPUT_KEYS) <= set(names):
            self.output_names = list(OUTPUT_KEYS)
        elif len(names) == 1:  # monai.bundle onnx_export of the bundle's network_def: the maps stacked as channels
            self.output_names, self.stacked = names, True
        elif len(names) >= len(OUTPUT_KEYS):
            logger.info("%s: outputs %s read in order as %s", self.path, names, list(OUTPUT_KEYS))
            self.output_names = names[: len(OUTPUT_KEYS)]
        else:
            raise ValueError(f"{self.path}: expected {len(OUTPUT_KEYS)} outputs {list(OUTPUT_KEYS)}, got {names}")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, X, Y, Z) image -> dict of (B, 1, X/s, Y/s, Z/s) maps on ``x``'s device."""
        outputs = self.session.run(self.output_names, {self.input_name: x.detach().cpu().float().numpy()})
        if self.stacked:
            outputs = [outputs[0][:, i : i + 1] for i in range(len(OUTPUT_KEYS))]
        return {k: torch.from_numpy(np.asarray(v)).to(x.device) for k, v in zip(OUTPUT_KEYS, outputs)}


def load_model(
    model: str | Path | nn.Module | Callable,
    model_cfg: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    network: nn.Module | None = None,
    channels_last: bool = True,
) -> Callable[[torch.Tensor], Any]:
    """A callable detector from a checkpoint, TorchScript or ONNX file (by suffix), or a module as is.

    Args:
        model: ``.pt``/``.pth`` checkpoint, ``.ts`` TorchScript, ``.onnx`` file, or an ``nn.Module``/callable.
        model_cfg: ``model`` config section used to build the network for a bare ``state_dict`` checkpoint
            (default: the defaults); a self-describing checkpoint builds its own, and a ``model_cfg`` contradicting
            it is an error naming the keys.
        device: where to run it. Default CPU.
        network: an already built network to load a checkpoint into (instead of building one from ``model_cfg``).
        channels_last: put a checkpoint-built or TorchScript network in ``channels_last_3d`` memory format
            (``device.channels_last``). Default True.
    Returns:
        The model in eval mode on ``device``; called on a (B, 1, X, Y, Z) tensor it returns the dict (or tuple) of
        maps ``heatmap``, ``diameter``, ``malignancy``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be loaded, a checkpoint does not fit the model config, or the model config
            contradicts a self-describing checkpoint.
    """
    dev = resolve_device(device)
    if isinstance(model, nn.Module):
        return model.to(dev).eval()
    if callable(model) and not isinstance(model, (str, Path)):
        return model
    path = Path(model)
    name = path.name.lower()
    if name.endswith(ONNX_SUFFIXES):
        return OnnxModel(path, dev)
    if name.endswith(TORCHSCRIPT_SUFFIXES):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TorchScript model not found")
        try:
            scripted = torch.jit.load(str(path), map_location=dev).eval()
            # same memory format as a checkpoint-built network, so both give identical outputs
            return scripted.to(memory_format=torch.channels_last_3d) if channels_last else scripted
        except RuntimeError as err:
            raise ValueError(f"{path}: not a TorchScript archive ({str(err).splitlines()[0][:200]})") from err
    net = load_checkpoint(network if network is not None else build_for_checkpoint(path, model_cfg), path).to(dev)
    return net.to(memory_format=torch.channels_last_3d) if channels_last else net


def build_for_checkpoint(checkpoint: str | Path, model_cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The (untrained) network a checkpoint's weights belong to.

    A self-describing checkpoint builds the network from its own ``model`` section, and the network keeps the
    description as its ``pivot_metadata`` string attribute (which TorchScript export carries along); a bare
    ``state_dict`` is built from ``model_cfg`` (default: the defaults).

    Raises:
        ValueError: ``model_cfg`` contradicts the checkpoint's ``model`` section (the message names the keys).
    """
    meta = read_metadata(checkpoint)
    recorded = (meta or {}).get("config", {}).get("model")
    if recorded is None:
        return build_network(model_cfg)
    clashes = model_contradictions(model_cfg, recorded)
    if clashes:
        raise ValueError(
            f"{checkpoint}: the model config contradicts the model the checkpoint was trained as: "
            f"{'; '.join(clashes)}. Drop these keys from --config (the checkpoint knows its model), or use the "
            f"config it was trained with"
        )
    net = build_network(recorded)
    setattr(net, ATTRIBUTE, json.dumps(meta))
    return net
