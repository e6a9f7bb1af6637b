"""MONAI inferers of PIVOT: test-time augmentation around any inferer, and windows fitted to the volume.

:class:`TTAInferer` is a :class:`monai.inferers.Inferer`, so the same object serves ``pivot infer``
(:class:`~pivot_monai.inference.predictor.Predictor`) and the bundle's validation evaluator (``validate#inferer`` in
``train.yaml`` wraps the sliding window in it when ``inference.tta.enabled``). The augmentation maths is in
:mod:`pivot_monai.inference.tta`.

:func:`fit_roi` chooses the inference window per volume and :class:`FittedWindowInferer` is the sliding window that
uses it (the bundle's validation and mining; ``Predictor`` runs the same inferer). The detector is fully
convolutional, so inference need not use the training patch: fewer, larger windows waste less compute on overlaps
(with ``overlap`` 0.25 a 48^3 window computes each voxel about 2.4 times).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer

from pivot_monai.host import forward_context
from pivot_monai.inference.tta import IDENTITY, TTASettings, augment, invert

__all__ = ["FittedWindowInferer", "TTAInferer", "fit_roi"]


class TTAInferer(Inferer):
    """Run ``inferer`` once per test-time augmentation, map each output back exactly and average.

    Args:
        inferer: the inner inferer, e.g. ``SlidingWindowInferer``.
        tta: :class:`~pivot_monai.inference.tta.TTASettings`, the ``inference.tta`` mapping or a bool. Default off
            (a pass-through).
        output_stride: input/output resolution ratio of the network (``model.output_stride``). Inputs are padded at
            the far end to a multiple of it, so flipped low-resolution maps invert exactly. Default 1.

    Example:
        >>> from monai.inferers import SimpleInferer
        >>> inferer = TTAInferer(SimpleInferer(), {"enabled": True, "num_augmentations": 4})
        >>> out = inferer(torch.rand(1, 1, 8, 8, 8), lambda x: {"heatmap": x})
        >>> tuple(out["heatmap"].shape)
        (1, 1, 8, 8, 8)
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        tta: TTASettings | Mapping[str, Any] | bool | None = None,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if int(output_stride) < 1:
            raise ValueError(f"model.output_stride must be >= 1, got {output_stride}")
        self.inferer = inferer
        self.tta = TTASettings.from_config(tta)
        self.output_stride = int(output_stride)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Average of the inverted outputs of every augmentation.

        Args:
            inputs: (B, C, X, Y, Z) image.
            network: the model (or any callable the inner inferer accepts).

        Returns:
            What the inner inferer returns (a tensor, or a dict of tensors) averaged over the passes, each (B, C',
            X/s, Y/s, Z/s) with ``s = output_stride`` rounded up.
        """
        names = self.tta.names
        if names == [IDENTITY]:
            return self.inferer(inputs, network, *args, **kwargs)
        s, size = self.output_stride, inputs.shape[2:]
        pad = [p for n in reversed(size) for p in (0, math.ceil(n / s) * s - n)]
        x = F.pad(inputs, pad, value=0.0) if any(pad) else inputs
        total: Any = None
        for name in names:
            out = _leafwise(lambda v, n=name: invert(v, n), self.inferer(augment(x, name), network, *args, **kwargs))
            total = out if total is None else _leafwise(torch.add, total, out)
        crop = (..., *(slice(0, math.ceil(n / s)) for n in size))
        return _leafwise(lambda v: (v / len(names))[crop], total)


def _leafwise(fn: Callable[..., torch.Tensor], first: Any, *rest: Any) -> Any:
    """``fn`` over the tensors of an inferer output (a tensor, a tuple/list or a mapping of them), zipped with
    ``rest`` of the same structure; tuples come back as lists."""
    if isinstance(first, Mapping):
        return {k: fn(v, *(r[k] for r in rest)) for k, v in first.items()}
    if isinstance(first, (tuple, list)):
        return [fn(*vs) for vs in zip(first, *rest)]
    return fn(first, *rest)


def fit_roi(
    size: Sequence[int], max_roi: Sequence[int], multiple: int = 1, min_roi: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The inference window for a volume of ``size``: whole axes where they fit, else equal windows under ``max_roi``.

    Per axis, an axis no longer than ``max_roi`` gets one window covering it (rounded up to ``multiple``); a longer
    axis is split into ``k = ceil(size / max_roi)`` windows of about ``size / k`` voxels plus a quarter of that as
    overlap, rounded up to ``multiple`` and capped at ``max_roi``. The sliding window then runs ``k`` windows along it
    instead of the many a small training patch needs.

    Args:
        size: (X, Y, Z) voxels of the volume.
        max_roi: the largest window per axis (``inference.roi_size``); memory grows with its volume.
        multiple: every window size is a multiple of it (``2 ** model.depth``: the network's divisibility).
        min_roi: the smallest window per axis (e.g. the training patch). Default ``multiple``.

    Returns:
        The window (X, Y, Z).

    Raises:
        ValueError: ``max_roi`` not 3 positive values, or not a multiple of ``multiple``.

    Example:
        >>> fit_roi((135, 95, 139), (128, 128, 128), multiple=8)
        (88, 96, 88)
    """
    max_roi = [int(v) for v in max_roi]
    if len(max_roi) != len(size) or min(max_roi) < 1 or any(v % multiple for v in max_roi):
        raise ValueError(
            f"inference.roi_size must be {len(size)} positive sizes divisible by {multiple} (2 ** model.depth), "
            f"got {max_roi}"
        )
    low = [int(v) for v in (min_roi or [multiple] * len(size))]
    roi = []
    for n, hi, lo in zip(size, max_roi, low):
        k = math.ceil(n / hi)
        want = n if k == 1 else math.ceil(n / k * 1.25)
        roi.append(max(lo, min(hi, math.ceil(want / multiple) * multiple)))
    return tuple(roi)


class FittedWindowInferer(Inferer):
    """MONAI's ``SlidingWindowInferer`` with its window fitted to each input by :func:`fit_roi`.

    With ``max_roi=None`` it is a plain sliding window of ``roi_size``. The bundle uses it for validation and
    hard-negative mining, so both see the windows ``pivot infer`` uses (``inference.roi_size``).

    Args:
        roi_size: the smallest window (``data.patch_size``), and the window when ``max_roi`` is ``None``.
        max_roi: the largest window (``inference.roi_size``), or ``None``.
        multiple: fitted windows are multiples of it (``2 ** model.depth``) and of ``stride``. Default 1.
        stride: the network's output stride. Inputs are padded at the far end to a multiple of it, so every window
            starts on an output-voxel boundary (MONAI aligns the last window to the volume's end). Default 1.
        sw_batch_size: windows per forward pass. Default 1.
        overlap: window overlap in [0, 1). Default 0.25.
        mode: blending, ``"gaussian"`` or ``"constant"``. Default ``"gaussian"``.
        **kwargs: further ``SlidingWindowInferer`` arguments.

    Example:
        >>> inferer = FittedWindowInferer((16, 16, 16), max_roi=(64, 64, 64), multiple=8)
        >>> inferer.window((40, 20, 70))
        (40, 24, 48)
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        max_roi: Sequence[int] | None = None,
        multiple: int = 1,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: str = "gaussian",
        stride: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if int(stride) < 1:
            raise ValueError(f"model.output_stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.roi_size = tuple(int(v) for v in roi_size)
        self.max_roi = None if max_roi is None else tuple(int(v) for v in max_roi)
        if self.max_roi is not None:
            if len(self.max_roi) != len(self.roi_size) or any(m < r for m, r in zip(self.max_roi, self.roi_size)):
                raise ValueError(
                    f"inference.roi_size must be {len(self.roi_size)} sizes >= data.patch_size {list(self.roi_size)} "
                    f"(or null), got {list(self.max_roi)}"
                )
        self.multiple = int(multiple)
        if self.max_roi is not None:
            fit_roi(self.roi_size, self.max_roi, self._multiple())  # fail now on a max_roi the network cannot take
        self.settings = {"sw_batch_size": int(sw_batch_size), "overlap": overlap, "mode": mode, **kwargs}

    def window(self, size: Sequence[int]) -> tuple[int, ...]:
        """The window for a volume of ``size`` (spatial)."""
        if self.max_roi is None:
            return self.roi_size
        return fit_roi(size, self.max_roi, self._multiple(), min_roi=self.roi_size)

    def _multiple(self) -> int:
        return max(self.multiple, self.stride)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Sliding-window inference of ``inputs`` (B, C, *spatial) with the window fitted to its size.

        The input is zero-padded at the far end to at least the window and to a multiple of ``stride`` (MONAI would
        pad a small input at both ends, which shifts maps of a network with an output stride > 1 by a fraction of a
        voxel), and the outputs are cropped back to ``ceil(size / stride)``. The forwards run in the host's
        :func:`~pivot_monai.host.forward_context` for the input's device.
        """
        with forward_context(inputs.device):
            return self._infer(inputs, network, *args, **kwargs)

    def _infer(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        size = tuple(int(n) for n in inputs.shape[2:])
        roi = self.window(size)
        inferer = SlidingWindowInferer(roi_size=roi, **self.settings)  # cheap: it holds settings only
        padded = tuple(max(r, math.ceil(n / self.stride) * self.stride) for n, r in zip(size, roi))
        if padded == size:
            return inferer(inputs, network, *args, **kwargs)
        pad = [p for n, t in reversed(list(zip(size, padded))) for p in (0, t - n)]
        out = inferer(F.pad(inputs, pad, value=0.0), network, *args, **kwargs)

        def crop(v: torch.Tensor) -> torch.Tensor:
            scale = [o / t for o, t in zip(v.shape[2:], padded)]
            return v[(..., *(slice(0, math.ceil(n * f)) for n, f in zip(size, scale)))]

        return _leafwise(crop, out)
