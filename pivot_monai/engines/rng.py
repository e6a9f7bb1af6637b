"""Random-number-generator states for resumable training: Python, NumPy, torch (CPU and CUDA), the training
loader's generator and every MONAI random transform.

A checkpoint must hold these for a resumed run to draw the same crops, augmentations and shuffles as an
uninterrupted one. The states are converted to tensors and plain values so that ``torch.load(weights_only=True)``
reads them back. Transforms are found the way MONAI's ``set_rnd`` seeds them: every ``numpy.random.RandomState``
reachable through a MONAI or PIVOT object, list or dict under the dataset's ``transform``, keyed by its attribute
path, so a resumed run with the same config restores each transform's stream. Nothing here imports ignite.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "transform_random_states"]

logger = logging.getLogger(__name__)

_WALK_MODULES = ("monai.", "pivot_monai.")


def _np_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
        "name": str(name),
    }


def _np_tuple(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(torch.as_tensor(state["keys"]).numpy(), dtype=np.uint32)
    return (state.get("name", "MT19937"), keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"]))


def _walk(obj: Any, path: str, seen: set[int], out: dict[str, np.random.RandomState], depth: int = 0) -> None:
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        out[path] = obj
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _walk(item, f"{path}[{i}]", seen, out, depth + 1)
        return
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _walk(obj[key], f"{path}.{key}", seen, out, depth + 1)
        return
    module = type(obj).__module__ or ""
    if not module.startswith(_WALK_MODULES) or not hasattr(obj, "__dict__"):
        return
    for key, value in vars(obj).items():
        if not key.startswith("__"):
            _walk(value, f"{path}.{key}", seen, out, depth + 1)


def transform_random_states(transform: Any) -> dict[str, np.random.RandomState]:
    """``{attribute path: RandomState}`` of every random transform reachable from ``transform``."""
    out: dict[str, np.random.RandomState] = {}
    _walk(transform, "transform", set(), out)
    return out


def capture_rng(loader: Any = None) -> dict[str, Any]:
    """The generator states of this process, and of ``loader`` (its ``generator`` and its dataset's transforms).

    Returns:
        ``{"python", "numpy", "torch", "cuda", "loader_generator", "transforms"}``; tensors and plain values only.
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": _np_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    generator = getattr(loader, "generator", None)
    state["loader_generator"] = generator.get_state() if isinstance(generator, torch.Generator) else None
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    state["transforms"] = {k: _np_state(r.get_state()) for k, r in transform_random_states(transform).items()}
    return state


def restore_rng(state: Mapping[str, Any], loader: Any = None) -> list[str]:
    """Restore what :func:`capture_rng` saved; returns the parts that could not be restored (logged at INFO).

    Transforms present in only one of the checkpoint and the current pipeline (a changed config) keep their seeded
    state; the returned list names them.
    """
    missing: list[str] = []
    if "python" in state:
        py = state["python"]
        random.setstate(
            (int(py["version"]), tuple(int(x) for x in torch.as_tensor(py["internal"]).tolist()), py["gauss"])
        )
    if "numpy" in state:
        np.random.set_state(_np_tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in cuda])
        else:
            missing.append("cuda")
    generator = getattr(loader, "generator", None)
    saved_gen = state.get("loader_generator")
    if isinstance(generator, torch.Generator) and saved_gen is not None:
        generator.set_state(torch.as_tensor(saved_gen, dtype=torch.uint8))
    elif (generator is None) != (saved_gen is None):
        missing.append("loader_generator")
    saved = dict(state.get("transforms") or {})
    current = transform_random_states(getattr(getattr(loader, "dataset", None), "transform", None))
    for key, rs in current.items():
        if key in saved:
            rs.set_state(_np_tuple(saved.pop(key)))
        else:
            missing.append(key)
    missing.extend(saved)
    if missing:
        logger.info(
            "random states not restored (config changed?): %s",
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    return missing
