"""The PIVOT multi-head nodule detector: a BasicUNet-style encoder-decoder with three dense heads.

The encoder and decoder reuse MONAI's ``TwoConv``, ``Down`` and ``UpCat`` blocks
(``monai/networks/nets/basic_unet.py``). Three heads share the decoder features:

* ``"heatmap"``: nodule-centre heatmap (1 channel),
* ``"diameter"``: nodule diameter in millimetres (1 channel, non-negative),
* ``"malignancy"``: malignancy score (1 channel).

Output convention (read this before writing a loss, an inferer or an exporter):

* **train mode** (``model.train()``): ``"heatmap"`` and ``"malignancy"`` are **logits**, so the losses can use the
  numerically stable ``*_with_logits`` forms under AMP.
* **eval mode** (``model.eval()``): ``"heatmap"`` and ``"malignancy"`` are **sigmoid probabilities** in [0, 1]. Models
  traced or scripted for export (TorchScript, ONNX) are exported in eval mode and therefore emit probabilities.
* ``"diameter"`` is millimetres in both modes: ``diameter_scale_mm * softplus(z)``, where ``z`` is the raw head
  output. ``softplus`` keeps it non-negative without the overflow risk of ``exp``; with the default scale of 10 mm a
  raw output of 0 decodes to about 6.9 mm, a typical LUNA16 nodule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

__all__ = ["ACTIVATIONS", "OUTPUT_KEYS", "OUTPUT_STRIDES", "PivotDetector", "PredictionHead"]

logger = logging.getLogger(__name__)

OUTPUT_KEYS: tuple[str, str, str] = ("heatmap", "diameter", "malignancy")
"""Keys of the dict returned by :meth:`PivotDetector.forward`, in output order (also the ONNX output order)."""

ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "relu": ("relu", {"inplace": True}),
    "leaky_relu": ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
    "elu": ("elu", {"inplace": True}),
}
"""Accepted ``activation`` names and the MONAI ``Act`` factory entries they map to."""

OUTPUT_STRIDES: tuple[int, ...] = (1, 2, 4)
"""Accepted ``output_stride`` values."""

_MIN_DEPTH, _MAX_DEPTH = 2, 5
_MAX_WIDTH_FACTOR = 16
_HEATMAP_PRIOR = 0.01


class PredictionHead(nn.Sequential):
    """A dense one-channel head: an optional 3x3x3 convolution block, then a 1x1x1 convolution.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the shared decoder features.
        hidden_channels: channels of the optional 3x3x3 ``Convolution`` (with ``act``/``norm``); ``None`` for a
            plain 1x1x1 projection.
        act: MONAI activation spec for the hidden block.
        norm: MONAI normalisation spec for the hidden block (``None`` for none).
        bias_init: initial bias of the final 1x1x1 convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_channels: int | None,
        act: str | tuple,
        norm: str | tuple | None,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        channels = in_channels
        if hidden_channels is not None:
            self.add_module(
                "hidden",
                Convolution(spatial_dims, in_channels, hidden_channels, kernel_size=3, act=act, norm=norm, padding=1),
            )
            channels = hidden_channels
        output = Conv["conv", spatial_dims](channels, 1, kernel_size=1)
        nn.init.constant_(output.bias, bias_init)
        self.add_module("output", output)


class PivotDetector(nn.Module):
    """BasicUNet-derived encoder-decoder with heatmap, diameter and malignancy heads.

    The encoder has ``depth + 1`` levels: ``encoder.0`` is a ``TwoConv`` at full resolution and ``encoder.l``
    (``l = 1..depth``) a ``Down`` block (2x max-pooling then ``TwoConv``). Level ``l`` has
    ``base_filters * 2 ** min(l, 4)`` channels (width capped at 16x). The decoder is a stack of ``UpCat`` blocks that
    climbs from the bottleneck back to level ``log2(output_stride)``, so the heads run at ``1 / output_stride`` of the
    input resolution; skipping the full-resolution decoder stage roughly halves CPU cost at ``output_stride=2``.

    **Outputs are logits in train mode and probabilities in eval mode** (heatmap and malignancy; the diameter is
    always mm). See the module docstring.

    Args:
        spatial_dims: number of spatial dimensions. Defaults to 3.
        in_channels: number of input channels. Defaults to 1.
        base_filters: channels of the first encoder level. Defaults to 16.
        depth: number of 2x downsamplings, 2 to 5. Input sizes must be divisible by ``2 ** depth``. Defaults to 4.
        batch_norm: batch norm if True, else instance norm (affine). Defaults to True. Convolutions followed by
            batch norm have no bias.
        dropout: dropout rate inside every convolution block. Defaults to 0.0.
        activation: one of ``"relu"``, ``"leaky_relu"`` (slope 0.1), ``"elu"``. Defaults to ``"leaky_relu"``.
        output_stride: 1, 2 or 4; must be smaller than ``2 ** depth`` so at least one decoder stage remains.
            Defaults to 1.
        head_channels: channels of an optional 3x3x3 block in each head; ``None`` for 1x1x1 heads only.
        diameter_scale_mm: the diameter head decodes ``diameter_scale_mm * softplus(z)``. Defaults to 10.0.

    Raises:
        ValueError: on an out-of-range ``depth``, ``output_stride``, ``base_filters``, ``dropout``, or an unknown
            ``activation``.

    Example:
        >>> net = PivotDetector(base_filters=8, depth=3, output_stride=2).eval()
        >>> out = net(torch.zeros(1, 1, 32, 32, 32))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'heatmap': (1, 1, 16, 16, 16), 'diameter': (1, 1, 16, 16, 16), 'malignancy': (1, 1, 16, 16, 16)}
    """

    ENCODER_PREFIXES: tuple[str, ...] = ("encoder.",)
    """Parameter-name prefixes of the encoder (freeze these for transfer learning)."""
    DECODER_PREFIXES: tuple[str, ...] = ("decoder.",)
    """Parameter-name prefixes of the decoder."""
    HEAD_PREFIXES: tuple[str, ...] = ("heatmap_head.", "diameter_head.", "malignancy_head.")
    """Parameter-name prefixes of the three heads."""

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        base_filters: int = 16,
        depth: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.0,
        activation: str = "leaky_relu",
        output_stride: int = 1,
        head_channels: int | None = None,
        diameter_scale_mm: float = 10.0,
    ) -> None:
        super().__init__()
        _check_arguments(spatial_dims, in_channels, base_filters, depth, dropout, activation, output_stride)
        act = ACTIVATIONS[activation]
        norm: tuple = ("batch", {}) if batch_norm else ("instance", {"affine": True})
        bias = not batch_norm
        features = [base_filters * 2 ** min(level, int(math.log2(_MAX_WIDTH_FACTOR))) for level in range(depth + 1)]
        head_level = int(math.log2(output_stride))

        self.spatial_dims = spatial_dims
        self.depth = depth
        self.output_stride = output_stride
        self.head_level = head_level
        self.size_divisor = 2**depth
        self.diameter_scale_mm = float(diameter_scale_mm)
        self.features = tuple(features)

        encoder: list[nn.Module] = [TwoConv(spatial_dims, in_channels, features[0], act, norm, bias, dropout)]
        for level in range(1, depth + 1):
            encoder.append(Down(spatial_dims, features[level - 1], features[level], act, norm, bias, dropout))
        self.encoder = nn.ModuleList(encoder)

        # decoder[i] brings level (depth - i) up to level (depth - i - 1), concatenating that encoder level. Inputs
        # are divisible by 2 ** depth (checked in forward), so the upsampled and encoder maps always have the same
        # size: is_pad=False drops UpCat's replicate pad by zero voxels, a full copy of each upsampled map (4 ms of
        # a 0.18 s lung-box forward on 2 cores)
        self.decoder = nn.ModuleList(
            UpCat(
                spatial_dims, features[level], features[level - 1], features[level - 1], act, norm, bias, dropout,
                is_pad=False,
            )
            for level in range(depth, head_level, -1)
        )  # fmt: skip

        head_in = features[head_level]
        head_norm = norm if head_channels is not None else None
        prior_bias = -math.log((1.0 - _HEATMAP_PRIOR) / _HEATMAP_PRIOR)
        self.heatmap_head = PredictionHead(spatial_dims, head_in, head_channels, act, head_norm, prior_bias)
        self.diameter_head = PredictionHead(spatial_dims, head_in, head_channels, act, head_norm)
        self.malignancy_head = PredictionHead(spatial_dims, head_in, head_channels, act, head_norm)
        logger.debug("PivotDetector features per level: %s, heads at stride %d", features, output_stride)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the detector.

        Args:
            x: (B, C_in, D, H, W) image (for ``spatial_dims=3``); every spatial size must be divisible by
                ``2 ** depth``.

        Returns:
            dict with three (B, 1, D/s, H/s, W/s) tensors, ``s = output_stride``:

            - ``"heatmap"``: nodule-centre heatmap; logits in train mode, probabilities in [0, 1] in eval mode.
            - ``"diameter"``: nodule diameter in mm (>= 0) in both modes.
            - ``"malignancy"``: malignancy; logits in train mode, probabilities in [0, 1] in eval mode.

        Raises:
            ValueError: if ``x`` has the wrong number of dimensions or a spatial size not divisible by
                ``2 ** depth``.
        """
        self._check_input(x)
        # only levels the decoder climbs back to are kept: at output_stride 2 the full-resolution features (the
        # largest maps) are freed once the next level is computed, so later levels reuse their memory
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level >= self.head_level:
                skips.append(x)
        for i, block in enumerate(self.decoder):
            x = block(x, skips[self.depth - i - 1 - self.head_level])

        heatmap = self.heatmap_head(x)
        diameter = self.diameter_scale_mm * F.softplus(self.diameter_head(x))
        malignancy = self.malignancy_head(x)
        if not self.training:
            heatmap = torch.sigmoid(heatmap)
            malignancy = torch.sigmoid(malignancy)
        return {"heatmap": heatmap, "diameter": diameter, "malignancy": malignancy}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"PivotDetector input must be (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                f"got shape {list(x.shape)}"
            )
        if torch.jit.is_tracing():  # sizes are fixed in a trace; avoid tracer warnings on the checks below
            return
        for size in x.shape[2:]:
            if size % self.size_divisor != 0:
                raise ValueError(
                    f"PivotDetector input spatial size must be divisible by 2 ** depth = {self.size_divisor}, "
                    f"got shape {list(x.shape)}; pad or crop the input (e.g. monai.transforms.DivisiblePad)"
                )

    def _parameters_with_prefix(self, prefixes: tuple[str, ...]) -> Iterator[nn.Parameter]:
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                yield param

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the encoder (names starting with :attr:`ENCODER_PREFIXES`)."""
        return self._parameters_with_prefix(self.ENCODER_PREFIXES)

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the decoder (names starting with :attr:`DECODER_PREFIXES`)."""
        return self._parameters_with_prefix(self.DECODER_PREFIXES)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the three heads (names starting with :attr:`HEAD_PREFIXES`)."""
        return self._parameters_with_prefix(self.HEAD_PREFIXES)


def _check_arguments(
    spatial_dims: int,
    in_channels: int,
    base_filters: int,
    depth: int,
    dropout: float,
    activation: str,
    output_stride: int,
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")
    if int(base_filters) < 2:
        raise ValueError(f"base_filters must be >= 2 (UpCat halves channels), got {base_filters!r}")
    if not _MIN_DEPTH <= int(depth) <= _MAX_DEPTH:
        raise ValueError(f"depth (number of downsamplings) must be in {_MIN_DEPTH}..{_MAX_DEPTH}, got {depth!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride!r}")
    if output_stride >= 2**depth:
        raise ValueError(
            f"output_stride must be smaller than 2 ** depth = {2**depth} (at least one decoder stage), "
            f"got output_stride={output_stride} with depth={depth}"
        )
