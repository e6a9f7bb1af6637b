"""The detector with its three maps stacked as channels: one tensor out, as MONAI's bundle tools expect.

``monai.bundle verify_net_in_out`` reads ``output.shape``, and ``ckpt_export`` / ``onnx_export`` save what the
network returns; both expect one tensor, while :class:`~pivot_monai.networks.PivotDetector` returns a dict.
:class:`StackedOutputs` returns ``torch.cat([heatmap, diameter, malignancy], dim=1)``, (B, 3, X/s, Y/s, Z/s) in
:data:`~pivot_monai.networks.OUTPUT_KEYS` order. Its ``state_dict`` is the wrapped network's own (no prefix), so a
``model.pt`` loads into it unchanged, and the PIVOT loaders split an exported stacked model back into its maps.
``bundle/configs/inference.yaml`` defines ``network_def`` with :func:`stacked_network`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pivot_monai.networks.checkpoint import build_for_checkpoint
from pivot_monai.networks.metadata import ATTRIBUTE

__all__ = ["StackedOutputs", "stacked_network"]

logger = logging.getLogger(__name__)


class StackedOutputs(nn.Module):
    """A dict-returning detector returning its maps as one (B, 3, X/s, Y/s, Z/s) tensor.

    Args:
        network: a module returning the dict of ``heatmap``, ``diameter`` and ``malignancy``.

    Example:
        >>> net = StackedOutputs(build_network({"base_filters": 4, "depth": 2})).eval()
        >>> tuple(net(torch.zeros(1, 1, 16, 16, 16)).shape)
        (1, 3, 16, 16, 16)
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.output_stride = int(getattr(network, "output_stride", 1))
        self.pivot_metadata = str(getattr(network, ATTRIBUTE, ""))  # kept by torch.jit.script (ckpt_export)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) image -> (B, 3, X/s, Y/s, Z/s): heatmap, diameter (mm), malignancy."""
        out = self.network(x)
        return torch.cat([out["heatmap"], out["diameter"], out["malignancy"]], dim=1)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wrapped network's ``state_dict`` (keys without a prefix)."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load into the wrapped network; a ``{"model": state_dict, ...}`` checkpoint is unwrapped first (so
        ``ckpt_export`` needs no ``--key_in_ckpt``)."""
        if isinstance(state_dict.get("model"), Mapping):
            state_dict = state_dict["model"]
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


def stacked_network(checkpoint: str | Path | None, model_cfg: Mapping[str, Any] | None = None) -> StackedOutputs:
    """The bundle's ``network_def``: the network ``checkpoint`` describes (untrained), its outputs stacked.

    Args:
        checkpoint: a ``model.pt``; a self-describing one builds its own model (a ``model_cfg`` contradicting it is
            an error naming the keys), a bare ``state_dict``, or a path that does not exist (``verify_net_in_out``
            on a fresh checkout), builds ``model_cfg``.
        model_cfg: the ``model`` section of the config.

    Raises:
        ValueError: ``model_cfg`` contradicts the checkpoint.
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        logger.info("%s not found: network_def built from the config's model section", checkpoint)
        from pivot_monai.networks.factory import build_network

        return StackedOutputs(build_network(model_cfg))
    return StackedOutputs(build_for_checkpoint(checkpoint, model_cfg))
