"""Dense maps over a whole volume from any loaded detector.

:class:`Predictor` runs a network loaded by :func:`~pivot_monai.networks.checkpoint.load_model` (checkpoint,
TorchScript or ONNX) with MONAI's :class:`~monai.inferers.SlidingWindowInferer` (dict outputs, maps at
``1 / output_stride`` of the input resolution) and optional test-time augmentation (:mod:`pivot_monai.inference.tta`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import Inferer

from pivot_monai.inference.inferers import FittedWindowInferer, TTAInferer
from pivot_monai.inference.model_settings import check_settings
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.inference.tta import TTASettings
from pivot_monai.networks import OUTPUT_KEYS
from pivot_monai.networks.checkpoint import load_model, resolve_device

__all__ = ["Predictor"]

logger = logging.getLogger(__name__)


def _as_dict(out: Any, where: str = "network output") -> dict[str, torch.Tensor]:
    if isinstance(out, Mapping):
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ValueError(f"{where} lacks {missing}; expected a dict with keys {list(OUTPUT_KEYS)}")
        return {k: out[k] for k in OUTPUT_KEYS}
    if isinstance(out, (tuple, list)) and len(out) >= len(OUTPUT_KEYS):
        return dict(zip(OUTPUT_KEYS, out))
    if isinstance(out, torch.Tensor) and out.dim() == 5 and out.shape[1] == len(OUTPUT_KEYS):
        # the maps stacked as channels (networks.stacked.StackedOutputs: the bundle's network_def, ckpt_export)
        return {k: out[:, i : i + 1] for i, k in enumerate(OUTPUT_KEYS)}
    raise ValueError(
        f"{where} must be a dict (or tuple) of {list(OUTPUT_KEYS)} or a (B, {len(OUTPUT_KEYS)}, X, Y, Z) tensor of "
        f"them stacked, got {type(out).__name__}{list(out.shape) if isinstance(out, torch.Tensor) else ''}"
    )


class Predictor:
    """Dense maps for a whole volume: sliding window (and TTA) over any loaded detector.

    Args:
        network: callable returning the dict (or tuple, or (B, 3, ...) channel stack) of maps for a (B, 1, *roi_size)
            tensor (see :func:`~pivot_monai.networks.checkpoint.load_model`).
        roi_size: sliding-window patch size ``(X, Y, Z)`` voxels (``data.patch_size``).
        overlap: window overlap in [0, 1). Default 0.25.
        sw_batch_size: windows per forward pass. Default 2.
        blend_mode: ``gaussian`` or ``constant``. Default ``gaussian``.
        device: where the network runs. Default CPU.
        tta: :class:`~pivot_monai.inference.tta.TTASettings`, an ``inference.tta`` mapping or a bool. Default off.
        output_stride: input/output resolution ratio; ``None`` takes the network's ``output_stride`` attribute (a
            :class:`~pivot_monai.networks.PivotDetector`, also scripted) or else measures it with one forward pass of
            a zero patch. Default None.
        inferer: a MONAI inferer to use instead of building a ``SlidingWindowInferer`` from the arguments above.
        max_roi: ``inference.roi_size``: fit the window to each volume, whole axes up to this size (see
            :meth:`window`); ``None`` slides ``roi_size`` windows. Default None.
        multiple: fitted windows are multiples of it (``2 ** model.depth``). Default 16.
        autocast: run the network under ``torch.autocast`` on ``device`` (mixed precision; see
            :func:`~pivot_monai.inference.settings.inference_autocast`); the maps come back float32 either way.
            Default False.
        autocast_dtype: the autocast dtype (``device.amp_dtype``). Default ``torch.float16``.

    Example:
        >>> net = build_network({"base_filters": 4, "depth": 2}).eval()
        >>> out = Predictor(net, (16, 16, 16))(torch.zeros(1, 1, 20, 24, 18))
        >>> tuple(out["heatmap"].shape)
        (1, 1, 20, 24, 18)
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], Any],
        roi_size: Sequence[int],
        *,
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        blend_mode: str = "gaussian",
        device: str | torch.device | None = None,
        tta: TTASettings | Mapping[str, Any] | bool | None = None,
        output_stride: int | None = None,
        inferer: Inferer | None = None,
        max_roi: Sequence[int] | None = None,
        multiple: int = 16,
        autocast: bool = False,
        autocast_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.roi_size = tuple(int(v) for v in roi_size)
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"data.patch_size must be 3 positive voxel counts, got {list(roi_size)}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"inference.overlap must be in [0, 1), got {overlap}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"inference.sw_batch_size must be >= 1, got {sw_batch_size}")
        if blend_mode not in ("gaussian", "constant"):
            raise ValueError(f"inference.blend_mode must be 'gaussian' or 'constant', got {blend_mode!r}")
        self.network = network
        self.max_roi = None if max_roi is None else tuple(int(v) for v in max_roi)
        self.multiple = int(multiple)
        self.overlap, self.sw_batch_size, self.blend_mode = float(overlap), int(sw_batch_size), blend_mode
        self.device = resolve_device(device)
        self.autocast, self.autocast_dtype = bool(autocast), autocast_dtype
        self.tta = TTASettings.from_config(tta)
        if output_stride is None and isinstance(getattr(network, "output_stride", None), int):
            output_stride = network.output_stride  # PivotDetector (also scripted) states it: no measuring forward
        self.output_stride = output_stride
        # a measured stride is set on the windows in stride()
        self.windows = FittedWindowInferer(
            self.roi_size,
            self.max_roi,
            self.multiple,
            self.sw_batch_size,
            self.overlap,
            self.blend_mode,
            stride=output_stride or 1,
        )
        self.inferer = inferer or self.windows
        if self.output_stride is not None:
            self._check_alignment()

    @classmethod
    def from_settings(cls, model: str | Path | nn.Module | Callable, settings: InferenceSettings) -> Predictor:
        """Load ``model`` (:func:`~pivot_monai.networks.checkpoint.load_model`) and set the window from ``settings``.

        ``settings.patch_size`` is the smallest window and ``settings.roi_size`` the largest (``None``: always the
        patch); fitted windows are multiples of ``2 ** model.depth``. A checkpoint-built network is prepared for this
        host (:meth:`~pivot_monai.host.HostTuning.prepare_network`).

        Raises:
            ModelConfigError: ``settings`` contradict what a self-describing ``model`` was trained with (build them
                with :func:`~pivot_monai.inference.model_settings.settings_for_model`).
        """
        check_settings(model, settings)
        network = load_model(model, settings.model, settings.device)
        if isinstance(model, (str, Path)):
            network = settings.host.prepare_network(network)
        return cls(
            network,
            settings.patch_size,
            overlap=settings.overlap,
            sw_batch_size=settings.sw_batch_size,
            blend_mode=settings.blend_mode,
            device=settings.device,
            tta=settings.tta,
            max_roi=settings.roi_size,
            multiple=settings.multiple,
            autocast=settings.autocast,
            autocast_dtype=settings.autocast_dtype,
        )

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
            out = _as_dict(self.network(x))
        return {k: v.float() for k, v in out.items()}

    def stride(self, in_channels: int = 1) -> int:
        """The network's output stride (measured once on a zero patch unless given)."""
        if self.output_stride is None:
            with torch.no_grad():
                out = self._forward(torch.zeros(1, in_channels, *self.roi_size, device=self.device))
            shape = tuple(out["heatmap"].shape[2:])
            ratios = {r / s for r, s in zip(self.roi_size, shape)}
            if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
                raise ValueError(
                    f"network maps {list(shape)} are not an integer fraction of the patch "
                    f"{list(self.roi_size)}; check data.patch_size against the model"
                )
            self.output_stride = int(next(iter(ratios)))
            self.windows.stride = self.output_stride
            logger.debug("measured output stride %d", self.output_stride)
            self._check_alignment()
        return int(self.output_stride)

    def _check_alignment(self) -> None:
        """Warn when sliding-window steps are not whole output voxels (blended maps then shift by a fraction)."""
        overlap = getattr(self.inferer, "overlap", None)
        if overlap is None or self.output_stride in (None, 1):
            return
        overlaps = overlap if isinstance(overlap, Sequence) else [overlap] * 3
        steps = [max(1, int(r * (1.0 - o))) for r, o in zip(self.roi_size, overlaps)]
        if any(step % self.output_stride for step in steps):
            logger.warning(
                "sliding-window steps %s (patch %s, overlap %s) are not multiples of the output stride %d; "
                "choose an overlap giving whole steps (e.g. 0.25 or 0.5)",
                steps,
                list(self.roi_size),
                overlap,
                self.output_stride,
            )

    def __call__(self, image: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Predict the maps of one volume.

        Args:
            image: (1, 1, X, Y, Z) (or (X, Y, Z)) processed image in [0, 1].

        Returns:
            dict of (1, 1, ceil(X/s), ceil(Y/s), ceil(Z/s)) float32 CPU tensors ``heatmap``, ``diameter`` (mm) and
            ``malignancy``, ``s`` = :meth:`stride`; averaged over the TTA passes when enabled.
        """
        x = torch.as_tensor(image, dtype=torch.float32)
        if x.dim() == 3:
            x = x[None, None]
        if x.dim() != 5:
            raise ValueError(f"Predictor expects a (1, 1, X, Y, Z) or (X, Y, Z) volume, got shape {list(x.shape)}")
        x = x.to(self.device)
        s = self.stride(x.shape[1])
        size = x.shape[2:]
        # padding happens at the far end, so the input index mapping stays unchanged: TTAInferer pads to a multiple of
        # the stride (flips invert exactly at low resolution), FittedWindowInferer to its window of each (possibly
        # rotated) input
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)  # MONAI
            out = _as_dict(TTAInferer(self.inferer, self.tta, s)(x, self._forward), "sliding-window output")
        crop = tuple(slice(0, math.ceil(n / s)) for n in size)
        return {k: v[(..., *crop)].cpu() for k, v in out.items()}

    def window(self, size: Sequence[int]) -> tuple[int, int, int]:
        """The sliding window used for a (padded) volume of ``size``: ``roi_size``, or fitted under ``max_roi``.

        With ``max_roi`` the window comes from :func:`~pivot_monai.inference.inferers.fit_roi`: whole axes where
        they fit, else a few equal windows, never smaller than ``roi_size``.
        """
        return self.windows.window(size)  # type: ignore[return-value]
