"""One settings object for the inference stage, built once from the config and passed instead of loose parameters.

:class:`InferenceSettings` holds what ``pivot infer``, ``pivot evaluate`` and the bundles need to turn a raw scan
into candidates: the preprocessing (``data``), the network (``model``), the sliding window, decoding and TTA
(``inference``), where it runs and in which precision (``device``), and the host's tuning
(:class:`~pivot_monai.host.HostTuning`). :meth:`InferenceSettings.from_config` reads them from the guide's sections;
its keyword arguments are the command-line flags, which override the config when not ``None``.

Example:
    >>> from pivot_monai.config import load_sections
    >>> settings = InferenceSettings.from_config(load_sections(None), device="cpu", overlap=0.5)
    >>> settings.overlap, settings.device.type
    (0.5, 'cpu')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pivot_monai.data.preprocess import PreprocessConfig
from pivot_monai.host import HostTuning, cpu_has_native_bf16
from pivot_monai.inference.decode import DecodeSettings
from pivot_monai.inference.tta import TTASettings
from pivot_monai.networks.checkpoint import resolve_device

__all__ = ["InferenceSettings", "inference_autocast"]

logger = logging.getLogger(__name__)


def inference_autocast(
    device: torch.device,
    device_cfg: Mapping[str, Any] | None = None,
    amp: bool | None = None,
    native_bf16: bool | None = None,
) -> tuple[bool, torch.dtype]:
    """Whether (and in which dtype) inference runs under autocast.

    With ``device.mixed_precision`` on (train.yaml's default), as the bundle's engines decide:

    * CUDA: autocast in ``device.amp_dtype`` (float16 by default);
    * CPU: only with ``device.force_cpu_amp``. Otherwise float32 on every CPU, so results do not depend on the host.

    ``amp`` (``--amp`` / ``--no-amp``) overrides this. On a CPU the dtype is always bfloat16
    (:func:`~pivot_monai.engines.runtime.autocast_dtype`); bf16 pays only on CPUs that compute it natively (AMX or
    AVX512-BF16), elsewhere it is emulated and slower, and ``--amp`` warns.

    Args:
        device: where the network runs.
        device_cfg: the guide's ``device`` section, or ``None`` (no mixed precision).
        amp: explicit on/off, or ``None`` to follow ``device_cfg``.
        native_bf16: whether the CPU has native bfloat16 (for the ``--amp`` warning); ``None`` asks the CPU.

    Returns:
        (enabled, dtype).

    Raises:
        ValueError: ``device.amp_dtype`` is not a known dtype.
    """
    from pivot_monai.engines.runtime import autocast_dtype, use_amp, use_cpu_autocast

    cfg = dict(device_cfg or {})
    dtype = autocast_dtype(device, cfg.get("amp_dtype", "float16"))
    if amp is None:
        mixed, force = bool(cfg.get("mixed_precision", False)), bool(cfg.get("force_cpu_amp", False))
        on_cpu = device.type == "cpu"
        return (use_cpu_autocast(device, mixed, force) if on_cpu else use_amp(device, mixed, force)), dtype
    native = cpu_has_native_bf16() if native_bf16 is None else bool(native_bf16)
    if amp and device.type == "cpu" and not native:
        logger.warning("--amp on a CPU without native bfloat16 (AMX/AVX512-BF16): bf16 is emulated and slow")
    return bool(amp), dtype


def _triple(value: Any, key: str) -> tuple[int, int, int]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{key} must be 3 voxel counts, got {value!r}") from err
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{key} must be 3 positive voxel counts, got {list(out)}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class InferenceSettings:
    """Everything one inference run is configured with (see the module docstring).

    Attributes:
        preprocess: the ``data`` section's preprocessing (:class:`~pivot_monai.data.preprocess.PreprocessConfig`).
        decode: the ``inference`` section's peak decoding (:class:`~pivot_monai.inference.decode.DecodeSettings`).
        model: the ``model`` section, to build the network a checkpoint is loaded into.
        patch_size: ``data.patch_size``, the smallest sliding window (X, Y, Z).
        roi_size: ``inference.roi_size``, the largest window fitted per volume, or ``None`` (always ``patch_size``).
        overlap: window overlap in [0, 1) (``inference.overlap`` or ``--overlap``).
        sw_batch_size: windows per forward (``inference.sw_batch_size`` or ``--sw-batch-size``).
        blend_mode: ``gaussian`` or ``constant`` (``inference.blend_mode``).
        tta: test-time augmentation (``inference.tta``; ``--tta`` turns it on).
        device: where the network runs.
        autocast: run the network under autocast (:func:`inference_autocast`).
        autocast_dtype: its dtype.
        host: the host's tuning for ``device`` (``device`` section).
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    model: Mapping[str, Any] = field(default_factory=dict)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 2
    blend_mode: str = "gaussian"
    tta: TTASettings = field(default_factory=TTASettings)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: bool = False
    autocast_dtype: torch.dtype = torch.float16
    host: HostTuning = field(default_factory=HostTuning)

    @property
    def multiple(self) -> int:
        """Fitted windows are multiples of ``2 ** model.depth`` voxels."""
        return 2 ** int(dict(self.model).get("depth", 4))

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        tta: bool | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        amp: bool | None = None,
    ) -> InferenceSettings:
        """Settings from the guide's sections, with the command-line flags on top.

        Args:
            config: the merged config (or its ``data``, ``model``, ``inference`` and ``device`` sections), or a
                user YAML file loaded by :func:`~pivot_monai.config.load_sections`. ``None``: the defaults.
            device: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA when available) or a ``torch.device``. Default CPU.
            tta: force test-time augmentation on/off; ``None`` follows ``inference.tta.enabled``.
            overlap: sliding-window overlap; ``None`` follows ``inference.overlap``.
            sw_batch_size: windows per forward; ``None`` follows ``inference.sw_batch_size``.
            amp: force mixed precision on/off; ``None`` follows the ``device`` section.

        Raises:
            ValueError: a value out of range (the message names the config key).
        """
        if config is None or isinstance(config, (str, Path)):
            from pivot_monai.config import load_sections

            config = load_sections(config)
        data, inference = dict(config.get("data") or {}), dict(config.get("inference") or {})
        device_cfg = dict(config.get("device") or {})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = resolve_device(device)
        enabled, dtype = inference_autocast(dev, device_cfg, amp)
        roi = inference.get("roi_size")
        settings = cls(
            preprocess=PreprocessConfig.from_data_section(data),
            decode=DecodeSettings.from_config(inference),
            model=dict(config.get("model") or {}),
            patch_size=_triple(data.get("patch_size", (64, 64, 64)), "data.patch_size"),
            roi_size=None if roi is None else _triple(roi, "inference.roi_size"),
            overlap=float(inference.get("overlap", 0.25) if overlap is None else overlap),
            sw_batch_size=int(inference.get("sw_batch_size", 2) if sw_batch_size is None else sw_batch_size),
            blend_mode=str(inference.get("blend_mode", "gaussian")),
            tta=TTASettings.from_config(inference.get("tta"), enabled=tta),
            device=dev,
            autocast=enabled,
            autocast_dtype=dtype,
            host=HostTuning.from_config(device_cfg, dev),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ``ValueError`` naming the config key of a value out of range."""
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"inference.overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"inference.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.blend_mode not in ("gaussian", "constant"):
            raise ValueError(f"inference.blend_mode must be 'gaussian' or 'constant', got {self.blend_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings in effect, for reports (``infer_report.json``, ``metrics.json``)."""
        return {
            "preprocess": self.preprocess.to_dict(),
            "decode": vars(self.decode),
            "tta": self.tta.names,
            "roi_size": list(self.patch_size),
            "max_roi": None if self.roi_size is None else list(self.roi_size),
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast else None,
            "host": self.host.to_dict(),
        }
