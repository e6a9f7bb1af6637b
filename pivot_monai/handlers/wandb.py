"""Optional Weights & Biases logging (``logging.wandb``): off by default, offline-capable, install hint when missing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from monai.utils import is_scalar, optional_import

from pivot_monai.handlers.telemetry import metric_tag, output_loss

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["WandbHandler", "make_wandb_handler"]

_INSTALL_HINT = "pip install wandb (or pip install 'pivot-monai[wandb]'), or set logging.wandb.enabled: false"


class WandbHandler:
    """Log the trainer loss every ``interval`` iterations and the evaluator metrics every epoch to a wandb run.

    The keys are the TensorBoard tags: ``train/loss``, ``train/lr`` and ``val/<metric>`` (``val/froc``, ``val/loss``).

    Args:
        project: wandb project. Default ``"pivot"``.
        mode: ``"offline"`` (default, writes ``wandb/`` locally; sync later with ``wandb sync``), ``"online"`` or
            ``"disabled"``.
        init_kwargs: extra ``wandb.init`` arguments (``dir``, ``name``, ``tags``...).
        config: the run's hyperparameters to record.
        interval: iterations between loss logs. Default 10.

    Raises:
        ImportError: wandb is not installed (with the install hint).
        ValueError: unknown ``mode``.
    """

    def __init__(
        self,
        project: str = "pivot",
        mode: str = "offline",
        init_kwargs: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        interval: int = 10,
    ) -> None:
        wandb, has = optional_import("wandb")
        if not has:
            raise ImportError(f"logging.wandb.enabled is true but wandb is not installed: {_INSTALL_HINT}")
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logging.wandb.mode must be offline, online or disabled, got {mode!r}")
        self.run = wandb.init(project=project, mode=mode, config=dict(config or {}), **dict(init_kwargs or {}))
        self.interval = int(interval)
        self.logger = logging.getLogger(__name__)

    def attach(self, trainer: Engine, evaluator: Engine | None = None) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.log_loss)
        trainer.add_event_handler(Events.COMPLETED, self.close)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.log_metrics, trainer)

    def log_loss(self, engine: Engine) -> None:
        loss = output_loss(engine.state.output)
        if loss is not None:
            self.run.log(
                {"train/loss": loss, "train/lr": float(engine.optimizer.param_groups[0]["lr"])},
                step=engine.state.iteration,
            )

    def log_metrics(self, evaluator: Engine, trainer: Engine) -> None:
        metrics = {metric_tag(k): float(v) for k, v in evaluator.state.metrics.items() if is_scalar(v)}
        self.run.log(metrics, step=trainer.state.iteration)

    def close(self, engine: Engine | None = None) -> None:
        self.run.finish()


def make_wandb_handler(
    cfg: Mapping[str, Any] | None, run_config: Mapping[str, Any] | None = None, interval: int = 10
) -> WandbHandler | None:
    """A :class:`WandbHandler` when ``logging.wandb.enabled`` (and on DDP rank 0), else ``None``."""
    import torch.distributed as dist

    cfg = dict(cfg or {})
    if not cfg.get("enabled", False) or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return None
    return WandbHandler(
        project=cfg.get("project", "pivot"),
        mode=cfg.get("mode", "offline"),
        init_kwargs=cfg.get("init_kwargs"),
        config=run_config,
        interval=interval,
    )
