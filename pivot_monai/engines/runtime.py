"""Device, precision and run-time settings from the guide's ``device`` section."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "DEVICE_TYPES",
    "AutocastInferer",
    "amp_dtype",
    "apply_host_settings",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "heap_keeps_freed",
    "memory_format",
    "reuse_freed_memory",
    "select_device",
    "use_amp",
    "use_cpu_autocast",
]

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("cuda", "cpu", "mps")


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
    ``reuse_memory`` (``device.reuse_freed_memory``) applies :func:`reuse_freed_memory` to this process.

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
    if reuse_memory:
        reuse_freed_memory()
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


# mallopt(3) parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 2**31 - 1  # the largest value mallopt takes (an int): hand back only more than 2 GB of free heap top
_HEAP = {"keeps_freed": False}  # whether reuse_freed_memory has been applied in this process


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Serve large host allocations from the process heap and keep freed memory there for reuse (glibc only).

    glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh pages from the kernel, and
    returns them on free. PyTorch's CPU allocator keeps no cache, so each forward of a whole-lung window (a 2 mm
    lung box is ~1.8 M voxels: one 8-channel feature map is ~58 MB) faults in and zero-fills all of its activations
    again: about a third of the network's time on the 2-core machine of ``benchmarks/`` (0.41 -> 0.26 s per forward).
    This is what PyTorch's CPU performance guide fixes by preloading jemalloc or tcmalloc; neither can be preloaded
    from inside a running process nor installed from PyPI, so this sets the two glibc ``mallopt`` parameters that
    have the same effect on this pattern: no mmap for large blocks, and no trimming of the heap's top (below 2 GB).

    The cost is memory: the process keeps its high-water mark until it exits, and the heap fragments before it
    settles (torch's aligned blocks rarely fit a freed block exactly). Measured with the demo model: one fullsize scan
    per process peaked at 0.91 GB against 0.85 GB without; 28 scans in one process at 1.67 GB against 1.47 GB, stable
    after the first round of scans. It applies to allocations made after the call, in this process and in the
    processes it forks later (data-loader workers).

    Args:
        enabled: ``device.reuse_freed_memory``; ``False`` does nothing.

    Returns:
        Whether the setting was applied (``False`` when disabled, or off glibc, e.g. macOS or musl).
    """
    if not enabled:
        return False
    import platform

    from pivot_monai.engines.prefault import c_library

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("device.reuse_freed_memory: not glibc (%s), left as it is", platform.libc_ver())
        return False
    libc = c_library()
    if libc is None or not hasattr(libc, "mallopt"):  # no libc to load, or a libc without mallopt
        logger.debug("device.reuse_freed_memory: mallopt unavailable")
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    _HEAP["keeps_freed"] = _HEAP["keeps_freed"] or bool(ok)
    return bool(ok)


def heap_keeps_freed() -> bool:
    """Whether :func:`reuse_freed_memory` has been applied in this process (large freed blocks stay in the heap)."""
    return _HEAP["keeps_freed"]


def apply_host_settings(device_cfg: Mapping[str, Any] | None) -> bool:
    """The ``device`` section's process-wide host settings, for entry points outside the bundle (``pivot infer``,
    ``pivot evaluate``; in the bundle :func:`select_device` applies them): ``reuse_freed_memory`` (default on).

    Returns:
        Whether :func:`reuse_freed_memory` was applied.
    """
    return reuse_freed_memory(bool(dict(device_cfg or {}).get("reuse_freed_memory", True)))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Intel AMX or AVX512-BF16), where bf16 autocast pays.

    On such a CPU (e.g. a Sapphire Rapids VM of ``benchmarks/``) bf16 autocast ran the demo network's forward of a
    lung box 2.3x faster than float32; on CPUs without it (AVX2 only) bf16 is emulated and slower than float32.
    """
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


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

    Outputs are cast back to float32 so losses, metrics and decoding stay in full precision.

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
    """``network`` in ``channels_last_3d`` memory format when ``device.channels_last`` (state dict keys unchanged).

    Measured in ``benchmarks/bench_compute.py``: 1.3-1.9x faster 3D convolutions on this project's CPUs.
    """
    return network.to(memory_format=torch.channels_last_3d) if channels_last else network


def autocast_dtype(device: torch.device, name: str) -> torch.dtype:
    """The autocast dtype on ``device``: ``device.amp_dtype`` on an accelerator, always bfloat16 on a CPU.

    CPU float16 autocast is far slower than bfloat16 (the bundle's forced-CPU-AMP training ran at 0.01 patches/s
    with float16, benchmarks/bench_gpu.py on the CPU), so ``device.force_cpu_amp`` trains in bf16 whatever
    ``amp_dtype`` says (train.yaml's float16 is the CUDA default); ``pivot infer --amp`` does the same.

    Raises:
        ValueError: ``name`` is not a dtype ``amp_dtype`` knows.
    """
    dtype = amp_dtype(name)
    return torch.bfloat16 if device.type == "cpu" else dtype
