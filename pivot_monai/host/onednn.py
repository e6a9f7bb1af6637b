"""oneDNN for CPU inference: every float32 3D convolution of an inference window, and the activation after it.

PyTorch picks oneDNN (mkldnn) for a float32 CPU convolution only when the batch is larger than 1 or ``N * C * D * H``
exceeds 20480; otherwise it runs its native im2col kernel (``aten::slow_conv3d_forward``), which is slower and needs
a large im2col buffer. A whole-lung inference window is a batch of one with few channels, so its first convolutions
take the native path. :class:`OneDNNConvolutions` sends those calls to ``aten::mkldnn_convolution``, the kernel
PyTorch itself uses for larger inputs (PyTorch has no switch for the heuristic, hence a small function mode).
:func:`fuse_batch_norm` folds each eval-mode batch norm into the convolution before it, and :func:`fuse_activations`
has oneDNN apply the ReLU/LeakyReLU as it writes the convolution's output (a post-op, what ``torch.compile``'s CPU
backend emits for this pattern). What each measured is in ``benchmarks/README.md`` ("Host levers").
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = ["ConvActivation3d", "OneDNNConvolutions", "fuse_activations", "fuse_batch_norm", "onednn_available"]

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
    convolution (7 ms against 1 ms for the demo network, in every ``pivot infer`` process).

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


_POST_OPS = {nn.LeakyReLU: "leaky_relu", nn.ReLU: "relu"}  # activations oneDNN applies as a convolution post-op


class ConvActivation3d(nn.Conv3d):
    """A ``Conv3d`` followed by its activation, as one oneDNN call where :class:`OneDNNConvolutions` would reroute.

    Built by :func:`fuse_activations` from a trained convolution (its parameters are shared, state-dict keys
    unchanged). Elsewhere (CUDA, autocast, another dtype, gradients, a CPU without oneDNN) it runs the convolution
    and then the activation, as before.
    """

    def __init__(self, conv: nn.Conv3d, activation: nn.Module) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )  # fmt: skip
        self.weight, self.bias = conv.weight, conv.bias
        self.activation = activation
        self.post_op = _POST_OPS[type(activation)]
        self.scalars = [float(activation.negative_slope)] if isinstance(activation, nn.LeakyReLU) else []
        self.enabled = onednn_available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fast = self.enabled and self.padding_mode == "zeros" and _onednn_call(x, self.weight, self.bias, self.padding)
        if not fast:
            return self.activation(super().forward(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            self.post_op, self.scalars, "",
        )  # fmt: skip


def fuse_activations(network: nn.Module) -> int:
    """Fuse each ReLU/LeakyReLU that directly follows a convolution into it (:class:`ConvActivation3d`); eval only.

    The pairs are MONAI ``Convolution`` blocks whose ``adn`` is only identities, a dropout (a no-op in eval mode) and
    then the activation, i.e. after :func:`fuse_batch_norm` has folded their batch norm. Returns how many were fused.

    Raises:
        ValueError: the network is in train mode.
    """
    if network.training:
        raise ValueError("fuse_activations needs the network in eval mode (call .eval() first)")
    fused = 0
    for module, conv, adn in _conv_blocks(network):
        if type(conv) is not nn.Conv3d or not len(adn):  # already fused, or nothing after the convolution
            continue
        *rest, last = list(adn.children())
        if type(last) in _POST_OPS and all(isinstance(m, (nn.Identity, nn.Dropout)) for m in rest):
            module.conv, module.adn = ConvActivation3d(conv, last), nn.Identity()
            fused += 1
    logger.debug("fused %d activations into their convolutions", fused)
    return fused
