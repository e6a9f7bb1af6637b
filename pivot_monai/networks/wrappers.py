"""Thin wrappers around the multi-head detector for tools that expect one tensor output."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SelectOutput"]


class SelectOutput(nn.Module):
    """Return one entry of a dict-returning network, e.g. for ``monai.bundle verify_net_in_out``.

    Args:
        network: a module whose forward returns a dict of tensors.
        key: the entry to return. Default ``"heatmap"``.
    """

    def __init__(self, network: nn.Module, key: str = "heatmap") -> None:
        super().__init__()
        self.network, self.key = network, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> the ``key`` output, e.g. (B, 1, D/s, H/s, W/s) heatmap."""
        return self.network(x)[self.key]
