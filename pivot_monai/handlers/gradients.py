"""Gradient clipping and gradient-norm tracking on MONAI's ``IterationEvents.BACKWARD_COMPLETED``."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from monai.engines.utils import IterationEvents

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["GradientClipHandler"]


class GradientClipHandler:
    """Clip the global gradient norm before the optimiser step and record it as ``engine.state.grad_norm``.

    Under gradient accumulation only the micro-steps followed by an optimiser step are clipped (the others hold
    partial sums): those where :class:`~pivot_monai.engines.accumulation.GradientAccumulation` set
    ``engine.state.optimizer_step``, the shorter cycle that ends an epoch included. Without accumulation every
    iteration is clipped. Under AMP the gradients are unscaled first, so ``max_norm`` is in true gradient units.

    Args:
        max_norm: maximum global norm; ``None`` or ``enabled=False`` only measures the norm.
        norm_type: p of the p-norm. Default 2.0.
        enabled: clip (True) or only measure (False). Default True.
        name: logger name.

    Raises:
        ValueError: non-positive ``max_norm``/``norm_type``.
    """

    def __init__(
        self,
        max_norm: float | None = 1.0,
        norm_type: float = 2.0,
        enabled: bool = True,
        name: str | None = None,
    ) -> None:
        if enabled and max_norm is not None and max_norm <= 0:
            raise ValueError(f"training.gradient_clipping.max_norm must be > 0, got {max_norm}")
        if norm_type <= 0:
            raise ValueError(f"training.gradient_clipping.norm_type must be > 0, got {norm_type}")
        self.max_norm = float(max_norm) if (enabled and max_norm is not None) else math.inf
        self.norm_type = float(norm_type)
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not getattr(engine.state, "optimizer_step", True):
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            scaler.unscale_(engine.optimizer)
        params = [p for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            engine.state.grad_norm = 0.0
            return
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        engine.state.grad_norm = float(norm)
