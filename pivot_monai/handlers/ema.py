"""Exponential moving average of the network's weights (``training.ema``), on ignite's ``EMAHandler``.

With ``training.ema.enabled`` the trainer keeps an averaged copy of the network, updated after every optimiser step:
``theta_ema <- decay * theta_ema + (1 - decay) * theta``. Validation scores the averaged copy, and ``model.pt`` /
``model_best.pt`` hold it, so ``pivot infer``, ``pivot evaluate`` and the exports use it. The online network keeps
training and mining as before. Batch-norm statistics are copied from the online network (ignite's
``handle_buffers="copy"``). Periodic checkpoints carry the average too, so a resumed run continues it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

__all__ = ["WeightAverage", "averaged_network", "build_ema", "with_ema"]

logger = logging.getLogger(__name__)

# the average forgets faster at first: momentum falls linearly from this to 1 - decay over warmup_iterations
_WARMUP_MOMENTUM = 0.5


class WeightAverage(EMAHandler):
    """ignite's ``EMAHandler`` that restarts its average from the network when the trainer starts.

    The copy is made when the config is parsed, before ``training.pretrained`` weights are loaded (a trainer
    ``STARTED`` handler): without the restart the average would begin at the random initialisation. A resumed run's
    ``CheckpointLoader`` is attached after this handler, so it then restores the saved average on top.
    """

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
        """Attach the per-iteration update (see ``EMAHandler.attach``) and the restart on ``STARTED``."""
        engine.add_event_handler(Events.STARTED, self._restart)
        super().attach(engine, *args, **kwargs)

    def _restart(self, engine: Engine) -> None:
        self.ema_model.load_state_dict(self.model.state_dict())


def build_ema(network: nn.Module, cfg: Mapping[str, Any] | None) -> WeightAverage | None:
    """An ignite ``EMAHandler`` over ``network`` from ``training.ema``, or ``None`` when disabled.

    Args:
        network: the online network (DDP/DataParallel wrappers are averaged through ``.module``).
        cfg: ``{enabled, decay, warmup_iterations}``; ``decay`` in (0, 1), ``warmup_iterations`` >= 0.

    Raises:
        ValueError: ``decay`` or ``warmup_iterations`` out of range, naming the key.
    """
    cfg = dict(cfg or {})
    if not cfg.get("enabled", False):
        return None
    decay = float(cfg.get("decay", 0.999))
    if not 0.0 < decay < 1.0:
        raise ValueError(f"training.ema.decay must be in (0, 1), e.g. 0.999, got {decay}")
    warmup = int(cfg.get("warmup_iterations", 0))
    if warmup < 0:
        raise ValueError(f"training.ema.warmup_iterations must be >= 0, got {warmup}")
    momentum = 1.0 - decay
    kwargs: dict[str, Any] = {}
    if warmup > 0 and momentum < _WARMUP_MOMENTUM:
        kwargs = {"momentum_warmup": _WARMUP_MOMENTUM, "warmup_iters": warmup}
    logger.info("EMA of the network weights: decay %g, warm-up %d iteration(s)", decay, warmup)
    return WeightAverage(network, momentum=momentum, **kwargs)


def averaged_network(network: nn.Module, ema: EMAHandler | None) -> nn.Module:
    """The network validation scores and checkpoints save: the EMA copy when there is one, else ``network``."""
    return network if ema is None else ema.ema_model


def with_ema(save_dict: Mapping[str, Any], ema: EMAHandler | None) -> dict[str, Any]:
    """``save_dict`` of a resumable checkpoint, plus the EMA copy under ``"ema_model"`` when there is one."""
    out = dict(save_dict)
    if ema is not None:
        out["ema_model"] = ema.ema_model
    return out
