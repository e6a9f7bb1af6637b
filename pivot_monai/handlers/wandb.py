"""Optional Weights & Biases logging (``logging.wandb``): off by default, offline-capable, install hint when missing."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from monai.utils import is_scalar, optional_import

from pivot_monai.handlers.telemetry import metric_tag, output_loss

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["WandbHandler", "make_wandb_handler", "wandb_init_kwargs"]

_INSTALL_HINT = "pip install wandb (or pip install 'pivot-monai[wandb]'), or set logging.wandb.enabled: false"
_MODES = ("offline", "online", "disabled")


def wandb_init_kwargs(
    project: str = "pivot",
    mode: str = "offline",
    entity: str | None = None,
    tags: Sequence[str] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``wandb.init`` arguments of ``logging.wandb`` (what :class:`WandbHandler` starts its run with).

    Args:
        project: wandb project. Default ``"pivot"``.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``. Default ``"offline"``.
        entity: the team or user the run belongs to (the guide's ``entity``); ``None``: wandb's default.
        tags: run tags (the guide's ``tags: [unet, focal-loss, aug]``). Default none.
        init_kwargs: further ``wandb.init`` arguments (``dir``, ``name``...).
        config: the run's hyperparameters to record.

    Raises:
        ValueError: unknown ``mode``, ``tags`` not a list of strings, or a key given both directly and in
            ``init_kwargs`` with different values.
    """
    if mode not in _MODES:
        raise ValueError(f"logging.wandb.mode must be offline, online or disabled, got {mode!r}")
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise ValueError(f"logging.wandb.tags must be a list of strings, e.g. [unet, focal-loss], got {tags!r}")
    kwargs: dict[str, Any] = {"project": project, "mode": mode, "config": dict(config or {})}
    if entity is not None:
        kwargs["entity"] = str(entity)
    if tags:
        kwargs["tags"] = list(tags)
    for key, value in dict(init_kwargs or {}).items():
        if key in kwargs and kwargs[key] != value and key != "config":
            raise ValueError(f"logging.wandb.{key} and logging.wandb.init_kwargs.{key} disagree; give one")
        kwargs[key] = value
    return kwargs


class WandbHandler:
    """Log the trainer loss every ``interval`` iterations and the evaluator metrics every epoch to a wandb run.

    The keys are the TensorBoard tags: ``train/loss``, ``train/lr`` and ``val/<metric>`` (``val/froc``, ``val/loss``).

    Args:
        project: wandb project. Default ``"pivot"``.
        mode: ``"offline"`` (default, writes ``wandb/`` locally; sync later with ``wandb sync``), ``"online"`` or
            ``"disabled"``.
        init_kwargs: extra ``wandb.init`` arguments (``dir``, ``name``...).
        config: the run's hyperparameters to record.
        interval: iterations between loss logs. Default 10.
        entity: the wandb team or user (``logging.wandb.entity``). Default ``None``: wandb's default.
        tags: run tags (``logging.wandb.tags``). Default none.

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
        entity: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        kwargs = wandb_init_kwargs(project, mode, entity, tags, init_kwargs, config)
        wandb, has = optional_import("wandb")
        if not has:
            raise ImportError(f"logging.wandb.enabled is true but wandb is not installed: {_INSTALL_HINT}")
        self.run = wandb.init(**kwargs)
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
        entity=cfg.get("entity"),
        tags=cfg.get("tags"),
    )
