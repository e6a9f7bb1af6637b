"""CPU inference levers: oneDNN for every float32 3D convolution of an inference window, batch norms folded.

PyTorch picks oneDNN (mkldnn) for a float32 CPU convolution only when the batch is larger than 1 or ``N * C * D * H``
exceeds 20480; otherwise it runs its native im2col kernel (``aten::slow_conv3d_forward``), which is slower and needs
a large im2col buffer. A whole-lung inference window is a batch of one with few channels, so its first convolutions
take the native path. :class:`OneDNNConvolutions` sends those calls to ``aten::mkldnn_convolution``, the kernel
PyTorch itself uses for larger inputs (PyTorch has no switch for the heuristic, hence a small function mode).
:func:`fuse_batch_norm` folds each eval-mode batch norm into the convolution before it, so a forward holds one
activation buffer less per block. What each measured is in ``benchmarks/README.md`` ("Host levers").
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = ["OneDNNConvolutions", "fuse_batch_norm", "onednn_available"]

logger = logging.getLogger(__name__)

_MEASURED_MACHINES = ("x86_64", "amd64")  # platform.machine() of the CPUs the rerouting was measured on


def onednn_available() -> bool:
    """Whether :class:`OneDNNConvolutions` reroutes here: a PyTorch build with oneDNN (mkldnn) on an x86-64 CPU.

    Other CPUs (Arm's oneDNN goes through the Compute Library) were not measured, so PyTorch's own choice stays.
    """
    return bool(torch.backends.mkldnn.is_available()) and platform.machine().lower() in _MEASURED_MACHINES


class OneDNNConvolutions(TorchFunctionMode):
    """Within the context, float32 CPU 3D convolutions without gradients run on oneDNN whatever their batch size.

    Any other call (CUDA, another dtype or autocast, gradients needed, string padding, a build without oneDNN, a CPU
    other than x86-64) passes through unchanged, so the mode is safe around any network.

    Example:
        >>> conv = torch.nn.Conv3d(1, 4, 3, padding=1).eval()
        >>> x = torch.rand(1, 1, 8, 8, 8)
        >>> with torch.no_grad(), OneDNNConvolutions():
        ...     y = conv(x)
        >>> bool(torch.allclose(y, conv(x), atol=1e-5))
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = onednn_available()

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:  # noqa: D105
        kwargs = kwargs or {}
        if self.enabled and func is torch.conv3d:  # also torch.nn.functional.conv3d: the same builtin
            fast = _onednn_conv3d(*args, **kwargs)
            if fast is not None:
                return fast
        return func(*args, **kwargs)


def _onednn_conv3d(
    input: torch.Tensor,  # noqa: A002 - F.conv3d's own argument names
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor | None:
    """``aten::mkldnn_convolution`` for a call it takes as F.conv3d would, else ``None``."""
    if not _onednn_call(input, weight, bias, padding):
        return None

    def triple(v: Any) -> list[int]:
        return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * 3

    return torch.ops.aten.mkldnn_convolution(
        input, weight, bias, triple(padding), triple(stride), triple(dilation), int(groups)
    )


def _onednn_call(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Any) -> bool:  # noqa: A002
    """Whether a 3D convolution call can run on oneDNN here: a 5-D input, numeric padding, float32 CPU tensors, no
    autocast, and no gradients needed (training keeps PyTorch's own convolution and its backward)."""
    tensors = [t for t in (input, weight, bias) if t is not None]
    return (
        not isinstance(padding, str)
        and input.dim() == 5
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def _conv_blocks(network: nn.Module) -> Iterator[tuple[nn.Module, nn.Conv3d, nn.Sequential]]:
    """``(block, conv, adn)`` of every MONAI ``Convolution`` block (a ``Conv3d``, then its ``ADN``) in ``network``."""
    for module in network.modules():
        conv, adn = getattr(module, "conv", None), getattr(module, "adn", None)
        if isinstance(conv, nn.Conv3d) and isinstance(adn, nn.Sequential):
            yield module, conv, adn


def fuse_batch_norm(network: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it (eval mode only); returns how many.

    The pairs are MONAI ``Convolution`` blocks (``conv`` then ``adn.N``) with the default ``"NDA"`` order, as in
    ``TwoConv``/``Down``/``UpCat`` and the detector's heads. The network must be in eval mode: folding uses the running
    statistics, and a network that trains again must not be folded. Other modules are left as they are.

    The convolution's weights are replaced by ``torch.nn.utils.fusion.fuse_conv_bn_weights`` and the norm by an
    ``nn.Identity``, in place: ``torch.ao.quantization.fuse_modules`` gives the same weights but deep-copies each
    convolution, which costs more than the folding itself in every ``pivot infer`` process.

    Raises:
        ValueError: the network is in train mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if network.training:
        raise ValueError("fuse_batch_norm needs the network in eval mode (call .eval() first); it uses running stats")
    folded = 0
    for _, conv, adn in _conv_blocks(network):
        norm = getattr(adn, "N", None)
        first = next(iter(adn.named_children()), ("", None))[0]
        foldable = isinstance(norm, nn.BatchNorm3d) and norm.running_mean is not None and norm.running_var is not None
        if foldable and first == "N":  # a norm with running stats right after the convolution
            with torch.no_grad():
                conv.weight, conv.bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
                )
            adn.N = nn.Identity()
            folded += 1
    logger.debug("folded %d batch norms into their convolutions", folded)
    return folded
