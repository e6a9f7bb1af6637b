"""Optimisers and LR schedules from the guide's ``training.optimizer`` / ``training.scheduler`` sections."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from monai.optimizers import WarmupCosineSchedule

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "HeldWarmupCosineSchedule",
    "build_lr_scheduler",
    "build_optimizer",
    "plateau_metric",
]

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


class HeldWarmupCosineSchedule(WarmupCosineSchedule):
    """MONAI's ``WarmupCosineSchedule`` that stays at its last value after ``t_total`` epochs.

    MONAI's cosine rises again past ``t_total`` (``cos`` of a progress above 1); a run longer than the guide's
    ``T_max`` keeps ``min_lr`` instead.
    """

    def lr_lambda(self, step: int) -> float:
        return super().lr_lambda(min(step, self.t_total))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], epochs: int) -> Any:
    """Epoch-level LR schedule from ``training.scheduler``.

    * ``cosine``: linear warm-up for ``warmup_epochs``, then cosine decay to ``min_lr`` over ``t_max`` epochs
      (the guide's ``T_max``; ``None``: ``epochs``), ``min_lr`` after (:class:`HeldWarmupCosineSchedule`);
    * ``step``: multiply by ``gamma`` every ``step_size`` epochs;
    * ``plateau``: multiply by ``factor`` when the validation metric ``monitor`` (default
      ``training.early_stopping.monitor``, see :func:`plateau_metric`) has not improved in direction ``mode``
      (``max``/``min``) for ``patience`` validations, down to ``min_lr``;
    * ``none``: constant LR (returns ``None``).

    Raises:
        ValueError: unknown ``training.scheduler.type`` or ``mode``, or ``t_max`` not a positive integer.
    """
    kind = str(cfg.get("type", "cosine")).lower()
    if kind == "cosine":
        base_lr = optimizer.param_groups[0]["lr"]
        t_max = cfg.get("t_max")
        if t_max is None:
            t_max = epochs
        elif isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
            raise ValueError(f"training.scheduler.t_max must be a whole number of epochs >= 1 (or null), got {t_max!r}")
        warmup = int(cfg.get("warmup_epochs", 0))
        if warmup >= t_max and t_max > 0:
            warmup = max(t_max - 1, 0)
        return (
            HeldWarmupCosineSchedule(
                optimizer,
                warmup_steps=warmup,
                t_total=max(t_max, 1),
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
        mode = str(cfg.get("mode", "max"))
        if mode not in ("max", "min"):
            raise ValueError(f"training.scheduler.mode must be 'max' or 'min', got {mode!r}")
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=float(cfg.get("factor", 0.5)),
            patience=int(cfg.get("patience", 10)),
            min_lr=float(cfg.get("min_lr", 0.0)),
        )
    if kind == "none":
        return None
    raise ValueError(f"training.scheduler.type must be one of {list(SCHEDULERS)}, got {kind!r}")


def plateau_metric(
    scheduler: Mapping[str, Any], early_stopping: Mapping[str, Any] | None = None
) -> Callable[[Any], float]:
    """The ``step_transform`` of the plateau schedule: the evaluator's metric ``training.scheduler.monitor``.

    Args:
        scheduler: ``training.scheduler``; its ``monitor`` names an engine metric (``val_froc``, ``val_loss``...).
        early_stopping: ``training.early_stopping``, whose ``monitor`` is used when the scheduler names none.

    Returns:
        ``engine -> float``, raising a ``KeyError`` that names the key and the metrics there are when the metric is
        not computed.
    """
    name = scheduler.get("monitor") or (early_stopping or {}).get("monitor") or "val_froc"
    key = "training.scheduler.monitor" if scheduler.get("monitor") else "training.early_stopping.monitor"

    def metric(engine: Any) -> float:
        if name not in engine.state.metrics:
            raise KeyError(
                f"{key}={name!r} (the plateau schedule's metric) is not a validation metric; available: "
                f"{sorted(engine.state.metrics)}"
            )
        return float(engine.state.metrics[name])

    return metric
