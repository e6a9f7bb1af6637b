"""Transfer learning: load pretrained weights with a clear report, freeze and unfreeze the encoder.

:func:`load_pretrained` compares a checkpoint with the network and lists missing, unexpected and shape-mismatched
keys; ``strict`` turns any of them into an error, otherwise the tensors that fit are loaded and the rest skipped.

:func:`set_encoder_frozen` freezes the encoder (``network.encoder_parameters()``): ``requires_grad`` off and the
gradients set to ``None``. PyTorch optimisers skip parameters whose ``grad`` is ``None`` entirely (no momentum, no
weight decay), so the optimiser can stay built over all parameters. While frozen, a forward pre-hook puts the
encoder's normalisation layers in eval mode before every forward (MONAI's ``SupervisedTrainer`` calls
``network.train()`` at every iteration), so BatchNorm running statistics do not drift either. Nothing here imports
ignite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pivot_monai.networks.checkpoint import load_state_dict

__all__ = ["TransferReport", "encoder_is_frozen", "load_pretrained", "match_state_dict", "set_encoder_frozen"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_HOOK_ATTR = "_pivot_frozen_encoder_hook"
_LISTED = 20


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


@dataclass
class TransferReport:
    """Outcome of :func:`match_state_dict` / :func:`load_pretrained` (lists of parameter/buffer names)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether checkpoint and network match exactly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """Human-readable list of the mismatches (at most 20 names per kind)."""

        def names(items: list[Any]) -> str:
            more = f" ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            return ", ".join(map(str, items[:_LISTED])) + more

        lines = []
        if self.missing:
            lines.append(f"missing in checkpoint ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} checkpoint {list(a)} vs network {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatch ({len(self.mismatched)}): {names(shapes)}")
        return "; ".join(lines)


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def match_state_dict(
    network: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Split a checkpoint ``state`` against ``network``: the loadable tensors and a :class:`TransferReport`.

    A DataParallel/DDP ``module.`` prefix on every key is removed first.
    """
    own = _unwrap(network).state_dict()
    state = _strip_prefix(state)
    report, loadable = TransferReport(), {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            loadable[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state]
    return loadable, report


def load_pretrained(
    network: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor], strict: bool = False
) -> TransferReport:
    """Load pretrained weights into ``network`` and log what did not fit.

    Args:
        network: the detector (or a DataParallel/DDP wrapper of it).
        checkpoint: a ``.pt`` file holding a ``state_dict`` (bare or under ``"model"``/``"state_dict"``/
            ``"network"``, as training writes it), or the state dict itself.
        strict: raise on any missing, unexpected or shape-mismatched key (``training.pretrained.strict``). Default
            False: load what fits, skip the rest.

    Returns:
        the :class:`TransferReport`.

    Raises:
        FileNotFoundError: no such checkpoint file.
        ValueError: ``strict`` and the checkpoint does not match, listing the problems; or no tensor fits at all.
    """
    if isinstance(checkpoint, Mapping):
        state, where = dict(checkpoint), "pretrained state dict"
    else:
        state, where = load_state_dict(checkpoint), str(checkpoint)
    loadable, report = match_state_dict(network, state)
    if strict and not report.ok:
        raise ValueError(
            f"{where} does not match the network (training.pretrained.strict is true): "
            f"{report.problems()}; set training.pretrained.strict: false to load the matching tensors"
        )
    if not loadable:
        raise ValueError(
            f"{where}: no tensor fits the network ({report.problems()}); is it a PIVOT detector "
            f"checkpoint built with the same model section?"
        )
    _unwrap(network).load_state_dict(loadable, strict=False)
    logger.info(
        "loaded %d/%d pretrained tensors from %s",
        len(report.loaded),
        len(report.loaded) + len(report.missing) + len(report.mismatched),
        where,
    )
    if not report.ok:
        logger.warning("pretrained weights from %s partly skipped: %s", where, report.problems())
    return report


def _encoder_norms(network: nn.Module) -> list[nn.Module]:
    net = _unwrap(network)
    prefixes = tuple(getattr(net, "ENCODER_PREFIXES", ("encoder.",)))
    return [m for name, m in net.named_modules() if f"{name}.".startswith(prefixes) and isinstance(m, _NORM_TYPES)]


def _encoder_parameters(network: nn.Module) -> Iterable[nn.Parameter]:
    net = _unwrap(network)
    if not hasattr(net, "encoder_parameters"):
        raise TypeError(
            f"{type(net).__name__} has no encoder_parameters(); freezing needs a PivotDetector-like network"
        )
    return net.encoder_parameters()


def _norms_to_eval(module: nn.Module, args: Any) -> None:
    for norm in _encoder_norms(module):
        norm.eval()


def encoder_is_frozen(network: nn.Module) -> bool:
    """Whether :func:`set_encoder_frozen` froze the encoder."""
    return getattr(_unwrap(network), _HOOK_ATTR, None) is not None


def set_encoder_frozen(network: nn.Module, frozen: bool, freeze_norm_stats: bool = True) -> int:
    """Freeze (``frozen=True``) or unfreeze the encoder.

    Freezing switches ``requires_grad`` off, sets the gradients to ``None`` (so optimisers skip the parameters,
    weight decay included) and, with ``freeze_norm_stats``, keeps the encoder's normalisation layers in eval mode
    through a forward pre-hook. Unfreezing undoes all three (norm layers follow the network's mode again).

    Returns:
        the number of encoder parameter tensors changed.

    Raises:
        TypeError: the network has no ``encoder_parameters()``.
    """
    net = _unwrap(network)
    params = list(_encoder_parameters(net))
    for p in params:
        p.requires_grad_(not frozen)
        if frozen:
            p.grad = None
    hook = getattr(net, _HOOK_ATTR, None)
    if frozen and hook is None:
        handle = net.register_forward_pre_hook(_norms_to_eval) if freeze_norm_stats else None
        setattr(net, _HOOK_ATTR, handle or True)
        if freeze_norm_stats:
            for norm in _encoder_norms(net):
                norm.eval()
    elif not frozen and hook is not None:
        if hook is not True:
            hook.remove()
        setattr(net, _HOOK_ATTR, None)
        for norm in _encoder_norms(net):
            norm.train(net.training)
    return len(params)
