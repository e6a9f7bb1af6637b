"""Optimisers and LR schedules from the guide's ``training.optimizer`` / ``training.scheduler`` sections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from monai.optimizers import WarmupCosineSchedule

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_lr_scheduler", "build_optimizer"]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "plateau", "none")


def build_optimizer(params: Iterable[Any], lr: float, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW/Adam (``betas``, ``eps``, ``weight_decay``) or SGD (``momentum``, ``nesterov``, ``weight_decay``).

    Raises:
        ValueError: unknown ``training.optimizer.type`` or invalid values.
    """
    kind = str(cfg.get("type", "adamw")).lower()
    if lr <= 0:
        raise ValueError(f"training.learning_rate must be > 0, got {lr}")
    wd = float(cfg.get("weight_decay", 0.0))
    if kind in ("adamw", "adam"):
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(
            params,
            lr=lr,
            betas=tuple(float(b) for b in cfg.get("betas", (0.9, 0.999))),
            eps=float(cfg.get("eps", 1e-8)),
            weight_decay=wd,
        )
    if kind == "sgd":
        momentum, nesterov = float(cfg.get("momentum", 0.9)), bool(cfg.get("nesterov", False))
        if nesterov and momentum <= 0:
            raise ValueError("training.optimizer.nesterov needs training.optimizer.momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    raise ValueError(f"training.optimizer.type must be one of {list(OPTIMIZERS)}, got {kind!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], epochs: int) -> Any:
    """Epoch-level LR schedule.

    * ``cosine``: linear warm-up for ``warmup_epochs``, then cosine decay to ``min_lr`` (MONAI WarmupCosineSchedule);
    * ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    * ``plateau``: multiply by ``factor`` when the validation metric (``training.early_stopping.monitor`` /
      ``validation.save_best_metric``) has not improved for ``patience`` validations;
    * ``none``: constant LR (returns ``None``).

    Raises:
        ValueError: unknown ``training.scheduler.type``.
    """
    kind = str(cfg.get("type", "cosine")).lower()
    if kind == "cosine":
        base_lr = optimizer.param_groups[0]["lr"]
        warmup = int(cfg.get("warmup_epochs", 0))
        if warmup >= epochs and epochs > 0:
            warmup = max(epochs - 1, 0)
        return (
            WarmupCosineSchedule(
                optimizer,
                warmup_steps=warmup,
                t_total=max(epochs, 1),
                end_lr=float(cfg.get("min_lr", 0.0)),
                warmup_multiplier=0.1,
            )
            if base_lr > 0
            else None
        )
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(cfg.get("step_size", 30)), gamma=float(cfg.get("gamma", 0.1))
        )
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=str(cfg.get("mode", "max")),
            factor=float(cfg.get("factor", 0.5)),
            patience=int(cfg.get("patience", 10)),
            min_lr=float(cfg.get("min_lr", 0.0)),
        )
    if kind == "none":
        return None
    raise ValueError(f"training.scheduler.type must be one of {list(SCHEDULERS)}, got {kind!r}")
