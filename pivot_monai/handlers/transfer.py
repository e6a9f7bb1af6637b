"""Transfer-learning handlers (``training.pretrained``): load pretrained weights, freeze then unfreeze the encoder.

Thin ignite adapters over :mod:`pivot_monai.networks.transfer`. Both act at ``STARTED``, before MONAI's
``CheckpointLoader`` (attached later, in the bundle's ``initialize``), so a resumed run's checkpoint wins over the
pretrained weights, and the freeze state follows from ``engine.state.epoch`` at every ``EPOCH_STARTED``, so resuming
inside or after the frozen phase needs no extra state.

Under DistributedDataParallel, parameters that stop receiving gradients need ``find_unused_parameters=True`` (or
freeze before wrapping): DDP expects a gradient for every parameter that required one when it was built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn
from ignite.engine import Events

from pivot_monai.networks.transfer import TransferReport, encoder_is_frozen, load_pretrained, set_encoder_frozen

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["PretrainedLoader", "UnfreezeEncoderHandler"]


class PretrainedLoader:
    """Load pretrained weights into the network when training starts (``training.pretrained.checkpoint``).

    Args:
        network: the network to initialise.
        checkpoint: path of the pretrained ``.pt`` file.
        strict: fail on any missing, unexpected or shape-mismatched key. Default False (load what fits, log the rest).
        name: logger name.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist (checked here, before any training).
    """

    def __init__(
        self, network: nn.Module, checkpoint: str | Path, strict: bool = False, name: str | None = None
    ) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"training.pretrained.checkpoint: {path} not found")
        self.network, self.checkpoint, self.strict = network, path, bool(strict)
        self.report: TransferReport | None = None
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch > 0:  # a resumed run: the training checkpoint holds the weights
            return
        self.report = load_pretrained(self.network, self.checkpoint, strict=self.strict)


class UnfreezeEncoderHandler:
    """Keep the encoder frozen for the first ``freeze_epochs`` epochs, then unfreeze it.

    At ``STARTED`` the encoder is frozen when the run (fresh or resumed) starts inside the frozen phase; at every
    ``EPOCH_STARTED`` it is unfrozen once ``state.epoch > freeze_epochs``. Decoder and heads train throughout. See
    :func:`~pivot_monai.networks.transfer.set_encoder_frozen` for how the optimiser and BatchNorm statistics are
    kept still.

    Args:
        network: the detector (``encoder_parameters()``).
        freeze_epochs: epochs with a frozen encoder (``training.pretrained.freeze_epochs``), >= 0.
        freeze_norm_stats: keep encoder normalisation layers in eval mode while frozen. Default True.
        name: logger name.

    Raises:
        ValueError: ``freeze_epochs`` < 0.
        TypeError: the network has no ``encoder_parameters()``.
    """

    def __init__(
        self, network: nn.Module, freeze_epochs: int, freeze_norm_stats: bool = True, name: str | None = None
    ) -> None:
        if isinstance(freeze_epochs, bool) or int(freeze_epochs) < 0:
            raise ValueError(f"training.pretrained.freeze_epochs must be an integer >= 0, got {freeze_epochs!r}")
        inner = (
            network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
        )
        if not hasattr(inner, "encoder_parameters"):
            raise TypeError(
                f"training.pretrained.freeze_encoder needs a network with encoder_parameters(), got "
                f"{type(inner).__name__}"
            )
        self.network, self.freeze_epochs, self.freeze_norm_stats = network, int(freeze_epochs), bool(freeze_norm_stats)
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def started(self, engine: Engine) -> None:
        """Freeze when the next epoch is inside the frozen phase."""
        if engine.state.epoch < self.freeze_epochs and not encoder_is_frozen(self.network):
            n = set_encoder_frozen(self.network, True, self.freeze_norm_stats)
            self.logger.info(
                "encoder frozen (%d parameter tensors) for epochs %d..%d", n, engine.state.epoch + 1, self.freeze_epochs
            )

    def __call__(self, engine: Engine) -> None:
        """Unfreeze at the first epoch after the frozen phase."""
        if engine.state.epoch > self.freeze_epochs and encoder_is_frozen(self.network):
            set_encoder_frozen(self.network, False)
            self.logger.info("epoch %d: encoder unfrozen", engine.state.epoch)
