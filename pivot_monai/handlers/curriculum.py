"""Curriculum and progressive training stages for MONAI's ``SupervisedTrainer``.

:class:`StageHandler` applies one :class:`~pivot_monai.transforms.stages.StageSchedule` (``training.curriculum`` and
``training.progressive``): at ``STARTED`` and every ``EPOCH_STARTED`` it looks up the stage of the epoch about to run,
writes it to the shared :class:`~pivot_monai.transforms.stages.StageState` read by the crop transforms and, when the
stage changed, rebuilds the training ``DataLoader`` (new batch size; new workers that see the new state) and hands it
to the running engine with ``engine.set_data``.

The stage is derived from ``engine.state.epoch`` alone, so a run resumed from a checkpoint continues in the right
stage. The number of iterations per epoch (``engine.state.epoch_length``, MONAI sets it from the loader it was built
with) is kept across stages, as ignite's ``set_data`` intends: an epoch is a fixed number of optimiser steps (as in
nnU-Net), and ``iteration // epoch_length`` (how ignite restores the epoch from a checkpoint) and ignite's
end-of-training test stay exact. A loader shorter than an epoch is simply iterated again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events

from pivot_monai.transforms.stages import Stage, StageSchedule, StageState, rebuild_dataloader

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StageHandler"]


class StageHandler:
    """Switch curriculum / progressive stages at epoch boundaries.

    Args:
        schedule: the merged schedule (``StageSchedule.from_config(training.curriculum, training.progressive,
            model.depth)``).
        state: the :class:`~pivot_monai.transforms.stages.StageState` shared with the crop transforms.
        loader: the training loader to rebuild on a stage change; default the engine's current data.
        summary_writer: optional TensorBoard writer: ``train/stage_index``, ``train/stage_min_diameter``,
            ``train/stage_batch_size``.
        name: logger name. Default this module's.

    Raises:
        TypeError: ``schedule`` or ``state`` of the wrong type.

    Example:
        >>> handler = StageHandler(StageSchedule.from_config(cfg["curriculum"], cfg["progressive"], 4), state)
        >>> handler.attach(trainer)
    """

    def __init__(
        self,
        schedule: StageSchedule,
        state: StageState,
        loader: Any = None,
        summary_writer: Any = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(schedule, StageSchedule):
            raise TypeError(f"schedule must be a StageSchedule, got {type(schedule).__name__}")
        if not isinstance(state, StageState):
            raise TypeError(f"state must be a StageState, got {type(state).__name__}")
        self.schedule, self.state, self.loader, self.writer = schedule, state, loader, summary_writer
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        """Apply the next epoch's stage at ``STARTED`` (also after resuming) and each epoch's at ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def started(self, engine: Engine) -> None:
        """``state.epoch`` counts completed epochs here (0, or the epoch resumed from): apply the next one's stage."""
        self.apply(engine, engine.state.epoch + 1)

    def __call__(self, engine: Engine) -> None:
        """At ``EPOCH_STARTED`` ignite has already advanced ``state.epoch`` to the epoch about to run."""
        self.apply(engine, engine.state.epoch)

    def apply(self, engine: Engine, epoch: int) -> bool:
        """Switch to the stage of 1-based ``epoch``; rebuild and set the engine's loader if it changed.

        Returns:
            whether the stage changed.
        """
        if not self.schedule.enabled:
            return False
        stage = self.schedule.at(epoch)
        previous = self.state.stage
        if not self.state.apply(stage):
            return False
        if idist.get_rank() == 0:  # every rank switches; one logs
            self._log(stage, previous, epoch)
        if self.loader is None:
            self.loader = engine.state.dataloader
        new_loader = rebuild_dataloader(self.loader, stage.batch_size)
        engine.set_data(new_loader)
        if hasattr(engine, "data_loader"):  # MONAI Workflow keeps its own reference (a second run() uses it)
            engine.data_loader = new_loader
        return True

    def _log(self, stage: Stage, previous: Stage, epoch: int) -> None:
        what = []
        if stage.min_diameter != previous.min_diameter:
            what.append(f"positive crops from nodules >= {stage.min_diameter:g} mm")
        if stage.patch_size is not None and stage.patch_size != previous.patch_size:
            what.append(f"patch size {list(stage.patch_size)}")
        if stage.batch_size is not None and stage.batch_size != previous.batch_size:
            what.append(f"batch size {stage.batch_size}")
        self.logger.info("epoch %d: training stage %d: %s", epoch, stage.index, ", ".join(what) or "unchanged")
        if self.writer is not None:
            self.writer.add_scalar("train/stage_index", stage.index, epoch)
            self.writer.add_scalar("train/stage_min_diameter", stage.min_diameter, epoch)
            if stage.batch_size is not None:
                self.writer.add_scalar("train/stage_batch_size", stage.batch_size, epoch)
