"""What a trained model says about itself: the config it was trained with, its versions and its training run.

Every model file PIVOT writes carries the same description (a plain JSON-able mapping, :func:`describe_model`)::

    {"metadata_format": 1,
     "config": {"model": {...}, "data": {target_spacing, hu_window, lung_crop, antialias, malignancy_threshold,
                patch_size}, "inference": {...}},
     "fpr": {fov_mm, grid, fusion_weight, network, detector} or None,
     "versions": {"pivot": ..., "monai": ..., "torch": ...},
     "run_id": ..., "experiment": ..., "created": "2025-01-01T12:00:00Z"}

Where it is stored, by format:

* a checkpoint (``model.pt``, ``model_best.pt``, ``checkpoint_epoch=N.pt``): ``{"model": state_dict, "pivot":
  description[, "fpr": classifier checkpoint]}`` (:data:`METADATA_KEY`, :data:`CLASSIFIER_KEY`; the classifier
  entry is the ``fpr.pt`` mapping of :mod:`pivot_monai.inference.fpr`, embedded by an export step);
* TorchScript (``model.ts``): the extra file ``pivot.json`` (and ``fpr.pt``), and the scripted module's
  ``pivot_metadata`` string attribute, which also survives ``monai.bundle ckpt_export``;
* ONNX (``model.onnx``): the model's ``metadata_props`` ``pivot`` (JSON) and ``pivot.fpr`` (base64 of ``fpr.pt``).

A bare ``state_dict`` (written before models described themselves) has no description: :func:`read_metadata` gives
``None`` and the caller's config decides. Nothing here builds a network or imports the inference stage.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ATTRIBUTE",
    "CLASSIFIER_KEY",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "ONNX_CLASSIFIER_KEY",
    "RECORDED_DATA_KEYS",
    "TORCHSCRIPT_CLASSIFIER_FILE",
    "TORCHSCRIPT_FILE",
    "classifier_bytes",
    "classifier_from_bytes",
    "describe_model",
    "jsonable",
    "read_classifier_state",
    "read_metadata",
    "versions",
]

logger = logging.getLogger(__name__)

METADATA_FORMAT = 1
"""Version of the description's layout (0: the ``pivot.json`` of earlier exports, model and patch size only)."""
METADATA_KEY = "pivot"
CLASSIFIER_KEY = "fpr"
TORCHSCRIPT_FILE = "pivot.json"
TORCHSCRIPT_CLASSIFIER_FILE = "fpr.pt"
ONNX_CLASSIFIER_KEY = "pivot.fpr"
ATTRIBUTE = "pivot_metadata"
RECORDED_DATA_KEYS = ("target_spacing", "hu_window", "lung_crop", "antialias", "malignancy_threshold", "patch_size")
"""Keys of the ``data`` section a model records: its preprocessing and its training patch."""
_TS_SUFFIXES, _ONNX_SUFFIXES = (".ts", ".torchscript"), (".onnx",)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples to lists, other objects to their ``str``), e.g. for ``torch.save``
    files read with ``weights_only=True``."""
    return json.loads(json.dumps(value, default=str))


def versions() -> dict[str, str]:
    """The versions of PIVOT, MONAI and PyTorch in this environment."""
    import monai

    from pivot_monai import __version__

    return {"pivot": __version__, "monai": monai.__version__, "torch": torch.__version__}


def describe_model(
    sections: Mapping[str, Any],
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    fpr: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The description of a model trained with ``sections`` (module docstring).

    Args:
        sections: the resolved config, or at least its ``model``, ``data`` and ``inference`` sections.
        run_id: the training run's id (:attr:`~pivot_monai.handlers.resume.TrainingCheckpointer.run_id`).
        experiment: the experiment name of the run (``runs/<experiment>/<timestamp>/``).
        fpr: the false-positive-reduction classifier's description (``CandidateClassifier.to_dict()`` plus its
            ``network`` kwargs), or ``None`` when there is no second stage.

    Returns:
        A mapping of plain JSON types.
    """
    data = dict(sections.get("data") or {})
    inference = {k: v for k, v in dict(sections.get("inference") or {}).items() if k != "run"}  # run: a bundle id
    return jsonable(
        {
            "metadata_format": METADATA_FORMAT,
            "config": {
                "model": dict(sections.get("model") or {}),
                "data": {k: data[k] for k in RECORDED_DATA_KEYS if k in data},
                "inference": inference,
            },
            "fpr": None if fpr is None else dict(fpr),
            "versions": versions(),
            "run_id": run_id,
            "experiment": experiment,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def _normalise(meta: Any, where: Path) -> dict[str, Any] | None:
    """A description as :func:`describe_model` lays it out; the ``pivot.json`` of earlier exports is upgraded."""
    if not isinstance(meta, Mapping):
        return None
    if "config" in meta and isinstance(meta["config"], Mapping):
        return dict(meta)
    if "model" in meta and isinstance(meta["model"], Mapping):  # format 0: {"model", "patch_size", "outputs"}
        data = {"patch_size": list(meta["patch_size"])} if meta.get("patch_size") else {}
        logger.info("%s: an early export's description (model and patch size only)", where)
        return {
            "metadata_format": 0,
            "config": {"model": dict(meta["model"]), "data": data, "inference": {}},
            "fpr": None,
        }
    return None


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the loaders report unreadable files with their own message
        return None


def _torchscript_extras(path: Path) -> tuple[dict[str, bytes], Any]:
    extra = {TORCHSCRIPT_FILE: "", TORCHSCRIPT_CLASSIFIER_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError):
        return {}, None
    return {k: v if isinstance(v, bytes) else str(v).encode() for k, v in extra.items() if v}, module


def _onnx_props(path: Path) -> dict[str, str]:
    from monai.utils import optional_import

    onnx, has_onnx = optional_import("onnx")
    if has_onnx:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - onnx raises its own decode errors
            return {}
        return {p.key: p.value for p in model.metadata_props}
    ort, has_ort = optional_import("onnxruntime")
    if not has_ort:
        return {}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return {}
    return dict(session.get_modelmeta().custom_metadata_map)


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The description stored in a model file (checkpoint, TorchScript or ONNX), or ``None`` when it has none.

    Never raises for a file that cannot be read: the loaders report that with their own message.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return None
    name = p.name.lower()
    if name.endswith(_ONNX_SUFFIXES):
        text = _onnx_props(p).get(METADATA_KEY)
        return _normalise(json.loads(text), p) if text else None
    if name.endswith(_TS_SUFFIXES):
        extras, module = _torchscript_extras(p)
        if TORCHSCRIPT_FILE in extras:
            return _normalise(json.loads(extras[TORCHSCRIPT_FILE].decode()), p)
        text = getattr(module, ATTRIBUTE, None) if module is not None else None
        return _normalise(json.loads(text), p) if isinstance(text, str) and text else None
    state = _read_torch(p)
    if isinstance(state, Mapping) and isinstance(state.get(METADATA_KEY), Mapping):
        return _normalise(state[METADATA_KEY], p)
    return None


def classifier_bytes(state: Mapping[str, Any]) -> bytes:
    """A classifier checkpoint mapping (``fpr.pt``'s contents) as the bytes of ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def classifier_from_bytes(data: bytes) -> dict[str, Any]:
    """The classifier checkpoint mapping of :func:`classifier_bytes` (read with ``weights_only=True``)."""
    return dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def read_classifier_state(path: str | Path) -> dict[str, Any] | None:
    """The false-positive-reduction classifier embedded in a model file (``fpr.pt``'s mapping), or ``None``."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return None
    name = p.name.lower()
    if name.endswith(_ONNX_SUFFIXES):
        text = _onnx_props(p).get(ONNX_CLASSIFIER_KEY)
        return classifier_from_bytes(base64.b64decode(text)) if text else None
    if name.endswith(_TS_SUFFIXES):
        extras, _ = _torchscript_extras(p)
        data = extras.get(TORCHSCRIPT_CLASSIFIER_FILE)
        return classifier_from_bytes(data) if data else None
    state = _read_torch(p)
    if isinstance(state, Mapping) and isinstance(state.get(CLASSIFIER_KEY), Mapping):
        return dict(state[CLASSIFIER_KEY])
    return None
