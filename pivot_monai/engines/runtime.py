"""Device, precision and run-time settings from the guide's ``device`` section."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = ["DEVICE_TYPES", "amp_dtype", "select_device", "use_amp"]

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("cuda", "cpu", "mps")


def select_device(
    kind: str = "cuda",
    strict: bool = False,
    gpu_ids: Sequence[int] | None = None,
    cudnn_benchmark: bool = True,
    num_threads: int | None = None,
) -> torch.device:
    """The torch device for ``device.type``; an unavailable accelerator falls back to CPU (or raises if ``strict``).

    The GPU index comes from ``LOCAL_RANK`` under torchrun (multi-node safe), else from ``gpu_ids[0]``.

    Raises:
        ValueError: unknown ``device.type``.
        RuntimeError: the requested device is unavailable and ``device.strict`` is true.
    """
    import os

    kind = str(kind).lower()
    if kind not in DEVICE_TYPES:
        raise ValueError(f"device.type must be one of {list(DEVICE_TYPES)}, got {kind!r}")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    available = {
        "cuda": torch.cuda.is_available(),
        "cpu": True,
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }[kind]
    if not available:
        msg = f"device.type={kind!r} requested but not available on this machine"
        if strict:
            raise RuntimeError(f"{msg} (device.strict is true); set device.type: cpu or install a {kind} build")
        logger.warning("%s; falling back to CPU", msg)
        return torch.device("cpu")
    if kind == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank is not None else int((gpu_ids or [0])[0])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(kind)


def use_amp(device: torch.device, mixed_precision: bool, force_cpu: bool = False) -> bool:
    """Whether to train with autocast: on for CUDA when requested; on CPU only when forced (bf16 is slow there)."""
    if not mixed_precision:
        return False
    if device.type == "cuda":
        return True
    if force_cpu:
        logger.warning(
            "device.mixed_precision on CPU forced (device.force_cpu_amp); bf16 autocast is slow on CPUs "
            "without native bf16"
        )
        return True
    logger.info(
        "mixed precision disabled on %s: bf16 autocast is slow on CPUs without native bf16 support "
        "(set device.force_cpu_amp: true to force it)",
        device.type,
    )
    return False


def amp_dtype(name: str) -> torch.dtype:
    """``float16`` or ``bfloat16`` for ``device.amp_dtype``."""
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(name).lower() not in table:
        raise ValueError(f"device.amp_dtype must be float16 or bfloat16, got {name!r}")
    return table[str(name).lower()]
