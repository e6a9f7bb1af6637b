"""Device, precision and run-time settings from the guide's ``device`` section."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from pivot_monai.host import HostTuning

__all__ = [
    "DEVICE_TYPES",
    "MONAI_INDEXING_WARNING",
    "AutocastInferer",
    "amp_dtype",
    "autocast_dtype",
    "memory_format",
    "select_device",
    "use_amp",
    "use_cpu_autocast",
]

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("cuda", "cpu", "mps")

MONAI_INDEXING_WARNING = "Using a non-tuple sequence for multidimensional indexing"
"""Start of PyTorch's deprecation warning that ``monai.inferers.sliding_window_inference`` (MONAI 1.5) triggers."""


def select_device(
    kind: str = "cuda",
    strict: bool = False,
    gpu_ids: Sequence[int] | None = None,
    cudnn_benchmark: bool = True,
    num_threads: int | None = None,
    reuse_memory: bool = False,
) -> torch.device:
    """The torch device for ``device.type``; an unavailable accelerator falls back to CPU (or raises if ``strict``).

    The GPU index comes from ``LOCAL_RANK`` under torchrun (multi-node safe), else from ``gpu_ids[0]``.
    ``num_threads`` and ``reuse_memory`` (``device.num_threads``, ``device.reuse_freed_memory``) are the host's
    process-wide settings (:meth:`~pivot_monai.host.HostTuning.apply`).

    Raises:
        ValueError: unknown ``device.type``.
        RuntimeError: the requested device is unavailable and ``device.strict`` is true.
    """
    import os

    kind = str(kind).lower()
    if kind not in DEVICE_TYPES:
        raise ValueError(f"device.type must be one of {list(DEVICE_TYPES)}, got {kind!r}")
    HostTuning(kind, num_threads or None, bool(reuse_memory)).apply()
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
    """Whether MONAI's engines run CUDA AMP (autocast + GradScaler): only on CUDA and when requested.

    On CPU the engines' AMP path (CUDA autocast and scaler) does not apply; :func:`use_cpu_autocast` decides about CPU
    autocast instead, and this logs why AMP is off.
    """
    if not mixed_precision:
        return False
    if device.type == "cuda":
        return True
    if not force_cpu:
        logger.info(
            "mixed precision disabled on %s: bf16 autocast is slow on CPUs without native bf16 support "
            "(set device.force_cpu_amp: true to force it)",
            device.type,
        )
    return False


def use_cpu_autocast(device: torch.device, mixed_precision: bool, force_cpu: bool) -> bool:
    """Whether to run the network under CPU autocast: only when ``device.force_cpu_amp`` asks for it."""
    if device.type == "cpu" and mixed_precision and force_cpu:
        logger.warning(
            "device.force_cpu_amp: running the network under CPU autocast; bf16 is slow on CPUs without "
            "native bf16 support"
        )
        return True
    return False


class AutocastInferer:
    """Run another MONAI inferer under ``torch.autocast`` (used for forced CPU mixed precision).

    Outputs are cast back to float32 so losses, metrics and decoding stay in full precision. MONAI's sliding window
    indexes tensors with lists, which PyTorch >= 2.9 deprecates with a ``UserWarning`` on every validation; that one
    warning is silenced around the call (:data:`MONAI_INDEXING_WARNING`), as ``pivot infer``'s predictor does.

    Args:
        inferer: the wrapped inferer (e.g. ``SimpleInferer`` or ``SlidingWindowInferer``).
        enabled: apply autocast. Default False (a transparent pass-through).
        device_type: autocast device type. Default ``"cpu"``.
        dtype: autocast dtype. Default ``torch.bfloat16``.
    """

    def __init__(
        self, inferer: Any, enabled: bool = False, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16
    ) -> None:
        self.inferer, self.enabled, self.device_type, self.dtype = inferer, bool(enabled), device_type, dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MONAI_INDEXING_WARNING, category=UserWarning)
            if not self.enabled:
                return self.inferer(inputs, network, *args, **kwargs)
            with torch.autocast(self.device_type, dtype=self.dtype):
                out = self.inferer(inputs, network, *args, **kwargs)
        if isinstance(out, dict):
            return {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()}
        return out.float() if torch.is_tensor(out) else out


def amp_dtype(name: str) -> torch.dtype:
    """``float16`` or ``bfloat16`` for ``device.amp_dtype``."""
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(name).lower() not in table:
        raise ValueError(f"device.amp_dtype must be float16 or bfloat16, got {name!r}")
    return table[str(name).lower()]


def memory_format(network: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """``network`` in ``channels_last_3d`` memory format when ``device.channels_last`` (state dict keys unchanged)."""
    return network.to(memory_format=torch.channels_last_3d) if channels_last else network


def autocast_dtype(device: torch.device, name: str) -> torch.dtype:
    """The autocast dtype on ``device``: ``device.amp_dtype`` on an accelerator, always bfloat16 on a CPU.

    CPU float16 autocast is far slower than bfloat16, so ``device.force_cpu_amp`` trains in bf16 whatever
    ``amp_dtype`` says (train.yaml's float16 is the CUDA default); ``pivot infer --amp`` does the same.

    Raises:
        ValueError: ``name`` is not a dtype ``amp_dtype`` knows.
    """
    dtype = amp_dtype(name)
    return torch.bfloat16 if device.type == "cpu" else dtype
