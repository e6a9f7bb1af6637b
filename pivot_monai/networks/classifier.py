"""The second-stage candidate classifier: a small multi-scale 3D CNN that re-scores detector candidates.

The false-positive-reduction stage of the strongest LUNA16 systems (Dou et al., "Multilevel contextual 3-D CNNs for
false positive reduction in pulmonary nodule detection", IEEE TBME 2017) looks at each candidate through several
fields of view: a tight one that shows the nodule's shape, wider ones that show whether a bright blob continues as a
vessel or sits on the pleura. :class:`MultiScaleClassifier` does the same with one small stream per field of view.
Every patch of a candidate is resampled to the same grid (e.g. 20, 32 and 48 mm fields on 24^3 voxels, see
:mod:`pivot_monai.inference.fpr`), so all streams have the same shape; their pooled features are concatenated and a
two-layer head gives one logit per candidate.

Each stream is MONAI ``Convolution`` blocks (conv, norm, activation), the first at full resolution and each further
level strided by 2, then global average pooling, so any grid divisible by ``2 ** (len(channels) - 1)`` works.

Output convention, as for the detector: **logits in train mode, probabilities in eval mode**.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

__all__ = ["MultiScaleClassifier", "ScaleStream"]


class ScaleStream(nn.Sequential):
    """One field of view: a 3x3x3 ``Convolution`` block per level, levels after the first strided by 2, then pooling.

    Args:
        channels: output channels per level, e.g. ``(8, 16, 32)``.
        in_channels: channels of the patch. Defaults to 1.
        act: MONAI activation spec. Defaults to LeakyReLU (slope 0.1).
        norm: MONAI normalisation spec. Defaults to batch norm.
        dropout: dropout inside each block. Defaults to 0.0.
    """

    def __init__(
        self,
        channels: Sequence[int],
        in_channels: int = 1,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        previous = in_channels
        for level, width in enumerate(channels):
            block = Convolution(
                3, previous, int(width), strides=1 if level == 0 else 2, kernel_size=3, act=act, norm=norm,
                dropout=dropout or None, bias=False,
            )  # fmt: skip
            self.add_module(f"level{level}", block)
            previous = int(width)
        self.add_module("pool", nn.AdaptiveAvgPool3d(1))
        self.add_module("flatten", nn.Flatten(1))
        self.out_features = previous


class MultiScaleClassifier(nn.Module):
    """Nodule-or-not classifier of multi-scale candidate patches: one :class:`ScaleStream` per scale, fused by an MLP.

    Args:
        num_scales: number of fields of view (patch channels of the input). Defaults to 3.
        channels: channels per level of each stream. Defaults to ``(8, 16, 32)``.
        hidden: width of the fusion layer. Defaults to 64.
        dropout: dropout before the last layer. Defaults to 0.2.

    Raises:
        ValueError: ``num_scales < 1``, an empty ``channels``, or ``dropout`` outside [0, 1).

    Example:
        >>> net = MultiScaleClassifier(num_scales=3, channels=(4, 8)).eval()
        >>> net(torch.zeros(2, 3, 24, 24, 24)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        num_scales: int = 3,
        channels: Sequence[int] = (8, 16, 32),
        hidden: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if int(num_scales) < 1:
            raise ValueError(f"num_scales must be >= 1 (one patch per field of view), got {num_scales!r}")
        if not channels or min(int(c) for c in channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_scales = int(num_scales)
        self.channels = tuple(int(c) for c in channels)
        self.config = {
            "num_scales": self.num_scales, "channels": list(self.channels), "hidden": int(hidden),
            "dropout": float(dropout),
        }  # fmt: skip
        """The constructor arguments (checkpoints store them, so a classifier rebuilds without its config)."""
        self.size_divisor = 2 ** (len(self.channels) - 1)
        self.streams = nn.ModuleList(ScaleStream(self.channels) for _ in range(self.num_scales))
        width = self.streams[0].out_features * self.num_scales
        self.head = nn.Sequential(
            nn.Linear(width, int(hidden)), nn.LeakyReLU(0.1, inplace=True), nn.Dropout(float(dropout)),
            nn.Linear(int(hidden), 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score candidates.

        Args:
            x: (B, S, G, G, G) patches, one channel per scale (``S = num_scales``), intensities in [0, 1];
                ``G`` should be divisible by ``2 ** (len(channels) - 1)`` (other sizes work, rounding the strides).

        Returns:
            (B,) nodule logits in train mode, probabilities in [0, 1] in eval mode.

        Raises:
            ValueError: ``x`` is not 5D or has a channel count other than ``num_scales``.
        """
        if x.dim() != 5 or x.shape[1] != self.num_scales:
            raise ValueError(
                f"MultiScaleClassifier expects (B, {self.num_scales}, G, G, G) patches (one channel per scale), "
                f"got shape {list(x.shape)}"
            )
        features = torch.cat([stream(x[:, s : s + 1]) for s, stream in enumerate(self.streams)], dim=1)
        logit = self.head(features)[:, 0]
        return logit if self.training else torch.sigmoid(logit)
