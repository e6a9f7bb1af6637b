"""Will a training step fit in memory? An estimate from the network itself, checked before anything is built.

A 3D U-Net keeps every activation of the forward pass for the backward pass, so a step's memory grows with the
patch volume times the patches per step (``training.batch_size`` volumes x ``data.samples_per_volume`` crops). A
patch of 256^3 with the default network needs hundreds of GiB; without a check the run allocates until the kernel
kills it, with no message.

:func:`activation_bytes_per_voxel` builds the configured network and runs one forward pass on a small probe patch,
summing the storage of every tensor autograd saves for the backward pass (``torch.autograd.graph.
saved_tensors_hooks``); the sum scales with the voxel count. A step's peak measured 0.78-2.0 times that sum (CPU
RSS, base_filters 4-16, depth 2-4, patches 48^3-128^3 in batches of 1-4), so :func:`estimate_training_memory`
reports that range. :func:`check_training_memory` refuses a config whose lower bound exceeds the memory available
(RAM, within a cgroup limit, or the GPU's free memory) with the keys to change and a patch that would fit, and
warns when only the upper bound does.

Validation and hard-negative mining run the sliding window of ``pivot infer`` over whole volumes in the same
process: up to ``inference.sw_batch_size`` windows of ``inference.roi_size`` per forward, without autograd. Such a
forward's peak measured 0.25-0.75 times the saved activations of the same voxels in training (CPU RSS, base_filters
8-32, depth 3-4, output stride 1-2, windows 96^3-192^3), so :func:`estimate_inference_memory` reports that range and
the check holds the window to the same rule.

Set ``PIVOT_MEMORY_CHECK=off`` to skip the check.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pivot_monai.host.meminfo import cgroup_available, ram_available

__all__ = [
    "MemoryEstimate",
    "activation_bytes_per_voxel",
    "available_memory",
    "cgroup_available",
    "check_training_memory",
    "estimate_inference_memory",
    "estimate_training_memory",
]

logger = logging.getLogger(__name__)

PEAK_OVER_SAVED = (0.78, 2.0)
"""Measured range of a training step's peak memory over the activations autograd saves (module docstring)."""
INFERENCE_OVER_SAVED = (0.25, 0.75)
"""Measured range of a no-grad forward's peak memory over the activations training saves for as many voxels."""
_AMP_SAVED = 0.5  # CUDA mixed precision keeps most activations in half precision: the lower bound halves
_GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """One training step's memory against what the machine has.

    Attributes:
        patch_size: the largest patch of the run (``data.patch_size`` or a progressive stage's).
        patches: patches per step (batch size x samples per volume).
        bytes_per_voxel: activation bytes saved for the backward pass per input voxel.
        available: bytes available on ``where``.
        where: ``"RAM"`` or ``"GPU <index>"``.
        amp: CUDA mixed precision (halves the lower bound).
    """

    patch_size: tuple[int, int, int]
    patches: int
    bytes_per_voxel: float
    available: int
    where: str
    amp: bool = False

    @property
    def saved(self) -> float:
        """Activation bytes one step keeps for the backward pass (float32)."""
        return self.bytes_per_voxel * math.prod(self.patch_size) * self.patches

    @property
    def low(self) -> float:
        """Bytes the step needs at least."""
        return self.saved * PEAK_OVER_SAVED[0] * (_AMP_SAVED if self.amp else 1.0)

    @property
    def high(self) -> float:
        """Bytes the step may need."""
        return self.saved * PEAK_OVER_SAVED[1]


def activation_bytes_per_voxel(model: Mapping[str, Any] | None = None, probe: int | None = None) -> float:
    """Bytes autograd keeps for the backward pass per input voxel, from one forward pass of the ``model`` network.

    Args:
        model: the ``model`` section (:func:`~pivot_monai.networks.build_network`). Default the default network.
        probe: side of the cubic probe patch; default the smallest multiple of ``2 ** depth`` >= 32.

    Returns:
        Saved bytes (float32, each storage counted once) divided by the probe's voxels.
    """
    import torch

    from pivot_monai.networks import build_network

    section = dict(model or {})
    if probe is None:
        multiple = 2 ** int(section.get("depth", 4))
        probe = multiple * math.ceil(32 / multiple)
    factory = logging.getLogger("pivot_monai.networks.factory")
    level = factory.level
    factory.setLevel(logging.WARNING)  # the probe network is not the run's: no "built ..." line for it
    try:
        network = build_network(section).train()
    finally:
        factory.setLevel(level)
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        network(torch.zeros(1, int(section.get("in_channels", 1)), probe, probe, probe))
    return sum(storages.values()) / probe**3


def available_memory(device_type: str = "cpu") -> tuple[int, str]:
    """``(bytes, where)``: the free memory of the CUDA device when training runs there, else the RAM available
    (``MemAvailable`` of ``/proc/meminfo``, within a cgroup limit).

    Raises:
        OSError: ``/proc/meminfo`` cannot be read (not Linux).
    """
    if str(device_type).lower() == "cuda":
        import torch

        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            return int(torch.cuda.mem_get_info(index)[0]), f"GPU {index}"
    return ram_available(), "RAM"


def _patch(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]), int(value[2]))
    return None


def _steps(config: Mapping[str, Any]) -> list[tuple[tuple[int, int, int], int]]:
    """``(patch_size, patches per step)`` of the run and of each progressive stage; ``[]`` if not literal."""
    data, training = config.get("data") or {}, config.get("training") or {}
    samples = data.get("samples_per_volume", 4)
    batch = training.get("batch_size", 2)
    patch = _patch(data.get("patch_size"))
    if patch is None or not isinstance(samples, int) or not isinstance(batch, int):
        return []
    steps = [(patch, batch * samples)]
    progressive = training.get("progressive") or {}
    if progressive.get("enabled") is True:
        for stage in progressive.get("stages") or []:
            stage_patch = _patch(stage.get("patch_size")) if isinstance(stage, Mapping) else None
            stage_batch = stage.get("batch_size", batch) if isinstance(stage, Mapping) else None
            if stage_patch is not None and isinstance(stage_batch, int):
                steps.append((stage_patch, stage_batch * samples))
    return steps


def estimate_training_memory(config: Mapping[str, Any]) -> MemoryEstimate | None:
    """The memory of the run's largest training step against the machine's; ``None`` when the sizes are not
    literal values (``$`` expressions) or the network cannot be built here (the bundle reports that itself)."""
    steps = _steps(config)
    if not steps:
        return None
    patch, patches = max(steps, key=lambda s: math.prod(s[0]) * s[1])
    device = config.get("device") or {}
    device_type = str(device.get("type", "cpu"))
    available, where = available_memory(device_type)
    try:
        per_voxel = activation_bytes_per_voxel(config.get("model"))
    except (ValueError, TypeError, RuntimeError) as err:
        logger.debug("memory estimate skipped: the network could not be built here (%s)", err)
        return None
    amp = where.startswith("GPU") and device.get("mixed_precision") is True
    return MemoryEstimate(patch, patches, per_voxel, available, where, amp)


@dataclass(frozen=True)
class InferenceEstimate:
    """One sliding-window forward of validation, mining and ``pivot infer`` against what the machine has.

    Attributes:
        roi_size: the largest window (``inference.roi_size``, else ``data.patch_size``).
        windows: windows per forward (``inference.sw_batch_size``).
        bytes_per_voxel: activation bytes training saves per input voxel (the same network).
        available: bytes available on ``where``.
        where: ``"RAM"`` or ``"GPU <index>"``.
    """

    roi_size: tuple[int, int, int]
    windows: int
    bytes_per_voxel: float
    available: int
    where: str

    @property
    def low(self) -> float:
        """Bytes the forward needs at least."""
        return self.bytes_per_voxel * math.prod(self.roi_size) * self.windows * INFERENCE_OVER_SAVED[0]

    @property
    def high(self) -> float:
        """Bytes the forward may need."""
        return self.bytes_per_voxel * math.prod(self.roi_size) * self.windows * INFERENCE_OVER_SAVED[1]


def estimate_inference_memory(config: Mapping[str, Any], training: MemoryEstimate) -> InferenceEstimate | None:
    """The memory of the run's largest sliding-window forward (validation, mining); ``None`` when its sizes are not
    literal values. ``training`` supplies the network's bytes per voxel and the memory available."""
    inference, data = config.get("inference") or {}, config.get("data") or {}
    roi = inference.get("roi_size")
    roi = _patch(data.get("patch_size") if roi is None else roi)
    windows = inference.get("sw_batch_size", 1)
    if roi is None or isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        return None
    return InferenceEstimate(roi, windows, training.bytes_per_voxel, training.available, training.where)


def _fitting_side(estimate: MemoryEstimate, multiple: int) -> int:
    """The largest cubic patch side (a multiple of ``multiple``) whose upper bound fits, 0 if none."""
    voxels = estimate.available / (estimate.bytes_per_voxel * estimate.patches * PEAK_OVER_SAVED[1])
    return int(voxels ** (1 / 3) // multiple) * multiple


def check_training_memory(config: Mapping[str, Any]) -> MemoryEstimate | None:
    """Refuse a training config whose step cannot fit in memory; warn when it may not.

    Args:
        config: the merged training config (``data``, ``training``, ``model``, ``device`` sections).

    Returns:
        The estimate (``None`` when skipped: ``PIVOT_MEMORY_CHECK=off``, or sizes that are not literal values).

    Raises:
        ConfigValueError: the step needs more than the memory available; the message names ``data.patch_size``,
            ``training.batch_size`` and ``data.samples_per_volume`` and suggests a patch that fits.
    """
    from pivot_monai.engines.validate import ConfigValueError

    if os.environ.get("PIVOT_MEMORY_CHECK", "").strip().lower() in ("off", "0", "false", "no"):
        return None
    estimate = estimate_training_memory(config)
    if estimate is None:
        return None
    depth = int((config.get("model") or {}).get("depth", 4))
    side = _fitting_side(estimate, 2**depth)
    what = (
        f"data.patch_size {list(estimate.patch_size)} x {estimate.patches} patches per step (training.batch_size x "
        f"data.samples_per_volume) keeps {estimate.saved / _GIB:.1f} GiB of activations for the backward pass "
        f"({estimate.bytes_per_voxel:.0f} bytes per voxel for this model); the step needs "
        f"{estimate.low / _GIB:.1f}-{estimate.high / _GIB:.1f} GiB and {estimate.where} has "
        f"{estimate.available / _GIB:.1f} GiB available"
    )
    fix = (
        f"use a smaller data.patch_size (e.g. [{side}, {side}, {side}] fits) or fewer patches per step"
        if side
        else "use fewer patches per step (training.batch_size, data.samples_per_volume) or a smaller model"
    )
    if estimate.low > estimate.available:
        raise ConfigValueError("data.patch_size", f"{what}: it cannot fit; {fix} (PIVOT_MEMORY_CHECK=off skips this)")
    if estimate.high > estimate.available:
        logger.warning("%s: it may not fit; if the run is killed, %s", what, fix)
    else:
        logger.debug("%s", what)
    _check_inference_memory(estimate_inference_memory(config, estimate), 2**depth, ConfigValueError)
    return estimate


def _check_inference_memory(estimate: InferenceEstimate | None, multiple: int, error: type[Exception]) -> None:
    """Refuse (``error``) or warn about a validation/mining window that cannot or may not fit."""
    if estimate is None:
        return
    per_window = estimate.high / estimate.windows
    side = int((estimate.available / (per_window / math.prod(estimate.roi_size))) ** (1 / 3) // multiple) * multiple
    what = (
        f"validation and hard-negative mining run inference.sw_batch_size={estimate.windows} windows of "
        f"inference.roi_size {list(estimate.roi_size)} per forward; that needs {estimate.low / _GIB:.1f}-"
        f"{estimate.high / _GIB:.1f} GiB and {estimate.where} has {estimate.available / _GIB:.1f} GiB available"
    )
    if per_window <= estimate.available:
        fix = f"lower inference.sw_batch_size (1 window fits) or inference.roi_size (e.g. [{side}, {side}, {side}])"
    elif side:
        fix = f"use a smaller inference.roi_size (e.g. [{side}, {side}, {side}] fits) with inference.sw_batch_size 1"
    else:
        fix = "use a smaller inference.roi_size with inference.sw_batch_size 1, or a smaller model"
    if estimate.low > estimate.available:
        key = (
            "inference.roi_size"
            if per_window * INFERENCE_OVER_SAVED[0] / INFERENCE_OVER_SAVED[1] > estimate.available
            else "inference.sw_batch_size"
        )
        raise error(key, f"{what}: it cannot fit; {fix} (PIVOT_MEMORY_CHECK=off skips this)")
    if estimate.high > estimate.available:
        logger.warning("%s: it may not fit; if the run is killed, %s", what, fix)
    else:
        logger.debug("%s", what)
