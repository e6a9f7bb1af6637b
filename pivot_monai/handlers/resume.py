"""Resumable training: periodic and on-demand checkpoints of everything a run needs, and resuming from them.

:class:`TrainingCheckpointer` replaces MONAI's ``CheckpointSaver``/``CheckpointLoader`` pair for the periodic
checkpoints of ``train.yaml``. A checkpoint holds the trainer's epoch and iteration, the network, optimiser,
LR scheduler, AMP grad scaler and EMA weights, the early-stopping counter, the best-model tracker (so a resumed run
does not overwrite ``model_best.pt`` with a worse model), the hard-negative pool, the curriculum/progressive stage
index and the random states (:mod:`pivot_monai.engines.rng`). Files are written atomically
(:mod:`pivot_monai.engines.checkpoint`); ``keep_last_n`` rotation never removes the file just written.

``checkpointing.resume`` decides how a run starts:

* ``auto`` (the default): continue from the newest readable checkpoint of ``checkpointing.dir`` when there is one,
  else start a new run. The log says which, and how to do the other (``--restart`` / ``resume: false``).
* ``true``: continue, and fail with an error naming the folder when it holds no readable checkpoint.
* ``false`` or ``null``: start a new run; checkpoints of an earlier run in the folder are moved to
  ``previous_runs/<time>/`` first, so two runs' checkpoints never mix.
* a path: continue from that checkpoint file.

**The final validation.** It runs whole volumes in one process, and the kernel may kill it (memory, a time limit).
Before it, ``model.pt`` and a checkpoint marked ``final_validation: pending`` are written; after it, that checkpoint
is saved over by the periodic one or removed. A run resumed from it runs only the validation.

A run resumed from an end-of-epoch checkpoint continues bit for bit like an uninterrupted one where training is
deterministic (CPU, the same thread count), with any number of loader workers: train.yaml's
:class:`~pivot_monai.engines.rng.ItemSeededLoader` seeds each item from a generator the checkpoint saves. A
mid-epoch checkpoint (written by a graceful stop) resumes with the rest of that epoch's iterations on a fresh pass
of the loader.

:class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` (``model.pt``, ``model_best.pt``) with atomic
writes: the old file stays in place until the new one is complete.

**Self-describing files.** :func:`attach_model_metadata` gives the run's savers the model's description
(:mod:`pivot_monai.networks.metadata`: the resolved ``model`` section, the preprocessing, the inference settings,
the versions and the run id). Then ``model.pt`` and ``model_best.pt`` are ``{"model": state_dict, "pivot":
description}`` and every resumable checkpoint's ``pivot`` entry holds it too, so ``pivot infer --checkpoint``
needs no config. Without it (a bundle config that does not call it) they hold the bare ``state_dict``, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from pivot_monai.engines.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
    remove_stale_temporaries,
    rotate_checkpoints,
)
from pivot_monai.engines.rng import capture_rng, restore_rng
from pivot_monai.networks.metadata import METADATA_KEY, describe_model

__all__ = ["AtomicCheckpointSaver", "TrainingCheckpointer", "attach_model_metadata", "resume_mode"]

_MODES = ("auto", "true", "false")


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else module


def resume_mode(resume: Any) -> str | Path:
    """``"auto"``, ``"true"``, ``"false"`` or a checkpoint path from a ``checkpointing.resume`` value.

    Raises:
        TypeError: a value that is none of these (e.g. a number), naming the key.
    """
    if resume is None or resume is False:
        return "false"
    if resume is True:
        return "true"
    if isinstance(resume, (str, Path)):
        text = str(resume).strip()
        if text.lower() in _MODES:
            return text.lower()
        if text.lower() in ("latest", "yes"):
            return "true"
        if text.lower() in ("no", "restart", "none", ""):
            return "false"
        return Path(text)
    raise TypeError(
        f"checkpointing.resume must be auto, true, false or a checkpoint path, got {resume!r} "
        f"({type(resume).__name__}); e.g. checkpointing.resume: auto"
    )


class TrainingCheckpointer:
    """Save resumable checkpoints every ``save_interval`` epochs (and on request); resume a run from one.

    Args:
        save_dir: the run folder (``checkpointing.dir``).
        network: the online network (DDP/DataParallel wrappers are unwrapped).
        optimizer: its optimiser.
        lr_scheduler: the epoch-level LR scheduler, or ``None``.
        ema: the :class:`~pivot_monai.handlers.ema.WeightAverage`, or ``None``.
        hard_negative_pool: the :class:`~pivot_monai.transforms.hard_negatives.HardNegativePool`, or ``None``.
        early_stop: MONAI's ``EarlyStopHandler`` (attached before this handler), or ``None``.
        evaluator: the validation engine, whose best metric and ``model_best.pt`` tracker are saved; or ``None``.
        stage_state: the :class:`~pivot_monai.transforms.stages.StageState`, recorded for the log; or ``None``.
        save_interval: epochs between checkpoints; 0 writes only the checkpoints asked for (a graceful stop).
            Default 5.
        keep_last_n: checkpoints kept in ``save_dir`` (``None``/0: all). Default 3.
        resume: ``checkpointing.resume`` (module docstring). Default ``"auto"``.
        map_location: where checkpoint tensors are loaded. Default ``"cpu"``.

    Raises:
        TypeError: ``resume`` of the wrong type.
        ValueError: ``save_interval`` < 0.

    Example:
        >>> checkpointer = TrainingCheckpointer("runs/a", net, opt, save_interval=1, resume="auto")
        >>> checkpointer.attach(trainer)   # last of the trainer's handlers
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        ema: Any = None,
        hard_negative_pool: Any = None,
        early_stop: Any = None,
        evaluator: Engine | None = None,
        stage_state: Any = None,
        save_interval: int = 5,
        keep_last_n: int | None = 3,
        resume: Any = "auto",
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        if isinstance(save_interval, bool) or not isinstance(save_interval, int) or save_interval < 0:
            raise ValueError(f"checkpointing.save_interval must be an integer >= 0 (epochs), got {save_interval!r}")
        self.save_dir = Path(save_dir)
        self.network, self.optimizer, self.lr_scheduler, self.ema = network, optimizer, lr_scheduler, ema
        self.pool, self.early_stop, self.evaluator, self.stage_state = (
            hard_negative_pool,
            early_stop,
            evaluator,
            stage_state,
        )
        self.save_interval, self.keep_last_n = int(save_interval), keep_last_n
        self.mode = resume_mode(resume)
        self.map_location = map_location
        self.logger = logging.getLogger(name or __name__)
        self.run_id = uuid.uuid4().hex
        self.resumed_from: Path | None = None
        self.last_saved: tuple[int, Path] | None = None  # (iteration, path) of the newest checkpoint written
        self._pending: dict[str, Any] | None = None
        self._finished = False
        self._pending_final: Path | None = None  # the checkpoint written before the final validation, until it ends
        self._validate_only = False  # resumed from a run stopped in its final validation
        self.describe: Callable[[], dict[str, Any]] | None = None  # set by attach_model_metadata

    # ------------------------------------------------------------------------------------------------ attach
    def attach(self, engine: Engine) -> None:
        """Decide how the run starts (and restore the trainer's epoch at once, so ``STARTED`` handlers see it); save
        every ``save_interval`` epochs. Attach it after the trainer's other handlers and the early-stopping handler."""
        self._start(engine)
        engine.add_event_handler(Events.STARTED, self._restore)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.epoch_completed)
        if self.evaluator is not None:
            # the last iteration's ITERATION_COMPLETED comes before the last epoch's EPOCH_COMPLETED, where the final
            # validation runs; attached last, EPOCH_COMPLETED then comes after it
            engine.add_event_handler(
                Events.ITERATION_COMPLETED(event_filter=_last_iteration), self.before_final_validation
            )
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_last_epoch), self.after_final_validation)

    def epoch_completed(self, engine: Engine) -> None:
        if self._pending_final is not None:  # the last epoch: the final validation is done, its state saved over it
            self._pending_final = None
            self.save(engine, force=True)
        else:
            self.save(engine)

    def before_final_validation(self, engine: Engine) -> None:
        """The trained weights on disk before the final validation, which holds whole volumes in memory and can be
        killed (OOM, a time limit): ``model.pt`` and a resumable checkpoint marked as awaiting that validation. A run
        resumed from it only runs the validation (:meth:`_restore`). Rank 0 writes; every rank marks the round."""
        saved = [saver.save_final_now(engine) for saver in _savers(engine)]
        path = self.save(engine, final_validation="pending")
        self._pending_final = path if path is not None else Path()
        if path is not None:
            self.logger.info(
                "before the final validation: saved %s and %s (a run stopped in it resumes with only the validation)",
                ", ".join(str(p) for p in saved if p is not None) or "no model.pt",
                path.name,
            )

    def after_final_validation(self, engine: Engine) -> None:
        """The final validation finished: the checkpoint that waited on it is replaced by the periodic one (written
        just before, when ``save_interval`` falls on the last epoch) or removed, as a run without it would leave."""
        pending, self._pending_final = self._pending_final, None
        self._remove_pending(pending)

    def _remove_pending(self, pending: Path | None) -> None:
        if pending is None or not pending.name or idist.get_rank() != 0:
            return
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        if self.last_saved is not None and self.last_saved[1] == pending:
            self.last_saved = None

    # ------------------------------------------------------------------------------------------------ saving
    def state(self, engine: Engine) -> dict[str, Any]:
        """The checkpoint contents for ``engine`` now (tensors and plain values only)."""
        out: dict[str, Any] = {
            "model": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": engine.state_dict(),
        }
        if self.lr_scheduler is not None and hasattr(self.lr_scheduler, "state_dict"):
            out["lr_scheduler"] = self.lr_scheduler.state_dict()
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            out["scaler"] = scaler.state_dict()
        if self.ema is not None:
            out["ema_model"] = self.ema.ema_model.state_dict()
        if self.pool is not None:
            out["hard_negative_pool"] = self.pool.state_dict()
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            out["early_stopping"] = dict(stopper.state_dict())
        best = self._best_saver()
        if best is not None:
            out["best_checkpoint"] = [(float(p), str(f)) for p, f in best._key_metric_checkpoint.state_dict()["_saved"]]
        if self.evaluator is not None:
            out["evaluator"] = {
                "best_metric": float(getattr(self.evaluator.state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
            }
        length = engine.state.epoch_length or 1
        out["rng"] = capture_rng(engine.state.dataloader)
        out["pivot"] = {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "completed_epochs": int(engine.state.iteration // length),
            "stage": int(getattr(getattr(self.stage_state, "stage", None), "index", -1)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.describe is not None:  # the model's description next to the layout's own entries
            out["pivot"] = {**self.describe(), **out["pivot"]}
        return out

    def save(self, engine: Engine, force: bool = False, final_validation: str | None = None) -> Path | None:
        """Write a checkpoint of ``engine`` now (rank 0 only; ``None`` elsewhere) and rotate old ones.

        End of an epoch: ``checkpoint_epoch=E.pt``; inside one: ``checkpoint_epoch=E_iteration=I.pt``.
        A second call at the same iteration returns the file already written, unless ``force``.

        Args:
            engine: the trainer.
            force: write again at an iteration already saved (the state after the final validation).
            final_validation: ``"pending"`` marks a checkpoint written before the final validation.

        Raises:
            OSError: the folder cannot be written (full disk, read-only); the previous checkpoints are untouched.
        """
        iteration = int(engine.state.iteration)
        saved = self.last_saved is not None and self.last_saved[0] == iteration and self.last_saved[1].exists()
        if saved and not force:
            return self.last_saved[1]
        if idist.get_rank() != 0:
            return None
        length = engine.state.epoch_length or 1
        at_end = iteration % length == 0
        name = checkpoint_name(engine.state.epoch, None if at_end else iteration)
        state = self.state(engine)
        if final_validation is not None:
            state["pivot"]["final_validation"] = final_validation
        path = atomic_save(state, self.save_dir / name)
        self.last_saved = (iteration, path)
        if final_validation == "pending":
            # removed after the final validation (unless saved over), so it rotates out nothing; the caller logs it
            return path
        removed = rotate_checkpoints(self.save_dir, self.keep_last_n, protect=path)
        self.logger.info(
            "saved checkpoint %s (epoch %d, iteration %d)%s",
            path,
            engine.state.epoch,
            iteration,
            f"; removed {', '.join(p.name for p in removed)}" if removed else "",
        )
        return path

    # ------------------------------------------------------------------------------------------------ resuming
    def _start(self, engine: Engine) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if idist.get_rank() == 0:
            remove_stale_temporaries(self.save_dir)
        mode, folder = self.mode, self.save_dir
        found: tuple[Path, dict[str, Any]] | None = None
        if isinstance(mode, Path):
            found = (mode, load_checkpoint(mode, self.map_location))
            why = "checkpointing.resume names it"
        elif mode in ("auto", "true"):
            newest = newest_valid_checkpoint(folder, self.map_location)
            if newest is not None:
                found = (newest[0].path, newest[1])
            elif mode == "true":
                raise CheckpointError(
                    f"checkpointing.resume: true, but {folder} holds no readable checkpoint_epoch=*.pt; "
                    "start a new run with checkpointing.resume: auto (or --restart)"
                )
            why = (
                "automatic: the run folder holds a checkpoint; --restart (checkpointing.resume: false) starts over"
                if mode == "auto"
                else "checkpointing.resume: true"
            )
        else:
            self._archive_previous()
        if found is None:
            self.logger.info("starting a new run in %s (no checkpoint to resume)", folder)
            return
        path, state = found
        self.resumed_from = path
        meta = state.get("pivot", {})
        self.run_id = str(meta.get("run_id", self.run_id))
        trainer = dict(state["trainer"])
        length = engine.state.epoch_length or trainer.get("epoch_length") or 1
        iteration = int(
            trainer.get("iteration", int(trainer.get("epoch", 0)) * int(trainer.get("epoch_length", length)))
        )
        if trainer.get("epoch_length") not in (None, length):
            completed = iteration // int(trainer["epoch_length"])
            self.logger.warning(
                "%s: an epoch had %s iterations, now %d (data or batch size changed): resuming after epoch %d",
                path,
                trainer["epoch_length"],
                length,
                completed,
            )
            iteration = completed * length
        max_epochs = int(engine.state.max_epochs)
        completed = iteration // length
        if completed > max_epochs:
            raise CheckpointError(
                f"{path}: the checkpoint is at epoch {completed}, past training.epochs={max_epochs}; raise "
                "training.epochs or start over with --restart (checkpointing.resume: false)"
            )
        self.logger.info("resuming from %s after epoch %d, at iteration %d (%s)", path, completed, iteration, why)
        if iteration >= max_epochs * length:
            self._finished = True
            self._validate_only = meta.get("final_validation") == "pending" and self.evaluator is not None
            if self._validate_only:
                self._pending_final = path
                self.logger.info("that run finished its %d epochs but not its final validation: running it", max_epochs)
            else:
                self.logger.info("that run already finished its %d epochs: nothing to train", max_epochs)
        else:
            engine.load_state_dict({"iteration": iteration, "epoch_length": length, "max_epochs": max_epochs})
        self._pending = state

    def _archive_previous(self) -> None:
        old = [c.path for c in list_checkpoints(self.save_dir)] + sorted(
            self.save_dir.glob("checkpoint_epoch=*.corrupt")
        )
        if not old or idist.get_rank() != 0:
            return
        target = self.save_dir / "previous_runs" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target.mkdir(parents=True, exist_ok=True)
        for path in old:
            os.replace(path, target / path.name)
        self.logger.info("starting over: moved %d checkpoint(s) of the previous run to %s", len(old), target)

    def _restore(self, engine: Engine) -> None:
        """``STARTED``, after the other handlers' (EMA restart, stage loader rebuild): load the rest of the state."""
        state, self._pending = self._pending, None
        if state is None:
            return
        _unwrap(self.network).load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "lr_scheduler" in state and self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(engine, "scaler", None)
        if "scaler" in state and scaler is not None:
            scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema_model" in state:
                self.ema.ema_model.load_state_dict(state["ema_model"])
            else:
                self.logger.warning("the checkpoint holds no EMA weights: the average restarts from the network")
        if self.pool is not None and "hard_negative_pool" in state:
            self.pool.load_state_dict(state["hard_negative_pool"])
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and "early_stopping" in state:
            stopper.load_state_dict(state["early_stopping"])
        best = self._best_saver()
        if best is not None and state.get("best_checkpoint"):
            best.load_state_dict({"_saved": [tuple(x) for x in state["best_checkpoint"]]})
        if self.evaluator is not None and "evaluator" in state:
            self.evaluator.state.best_metric = state["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        if "rng" in state:
            restore_rng(state["rng"], engine.state.dataloader)
        if self._validate_only:
            self.evaluator.run(int(engine.state.max_epochs))
            pending, self._pending_final = self._pending_final, None
            periodic = self.save_interval > 0 and engine.state.max_epochs % self.save_interval == 0
            if periodic and pending is not None and idist.get_rank() == 0:
                self._mark_validated(pending, state)
            else:
                self._remove_pending(pending)
        if self._finished:
            engine.terminate()

    def _mark_validated(self, path: Path, state: dict[str, Any]) -> None:
        """Rewrite a checkpoint that waited on the final validation with that validation's outcome."""
        best = self._best_saver()
        if best is not None:
            state["best_checkpoint"] = [
                (float(p), str(f)) for p, f in best._key_metric_checkpoint.state_dict()["_saved"]
            ]
        state["evaluator"] = {
            "best_metric": float(getattr(self.evaluator.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
        }
        state["pivot"] = {**state.get("pivot", {}), "final_validation": "done"}
        atomic_save(state, path)

    def _best_saver(self) -> CheckpointSaver | None:
        if self.evaluator is None:
            return None
        for handler, *_ in self.evaluator._event_handlers.get(Events.EPOCH_COMPLETED, []):
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, CheckpointSaver) and owner._key_metric_checkpoint is not None:
                return owner
        return None


class _AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing through :func:`~pivot_monai.engines.checkpoint.atomic_save`; with a fixed
    ``filename`` its ``remove`` is a no-op, so the previous file stays until the new one replaces it. When its owner
    has a description (:func:`attach_model_metadata`), a single object's ``state_dict`` is written as ``{"model":
    state_dict, "pivot": description}`` (several objects: ``pivot`` added to their mapping)."""

    def __init__(self, dirname: str | Path, filename: str | None = None, owner: Any = None) -> None:
        self.dirname, self.filename, self.owner = Path(dirname), filename, owner

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        describe = getattr(self.owner, "describe", None)
        if describe is not None:
            single = len(getattr(self.owner, "save_dict", {}) or {}) == 1
            checkpoint = (
                {"model": checkpoint, METADATA_KEY: describe()} if single else {**checkpoint, METADATA_KEY: describe()}
            )
        atomic_save(checkpoint, self.dirname / (self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is None:
            with contextlib.suppress(FileNotFoundError):
                (self.dirname / filename).unlink()


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files (``model.pt``, ``model_best.pt``, ...) are written atomically and
    never deleted before their replacement is complete. Same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.describe: Callable[[], dict[str, Any]] | None = None  # set by attach_model_metadata
        for checkpoint, filename in (
            (self._final_checkpoint, self._final_filename),
            (self._key_metric_checkpoint, kwargs.get("key_metric_filename")),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename, owner=self)

    def _delete_previous_final_ckpt(self) -> None:
        """The final file is replaced atomically instead of deleted first."""
        if self._final_checkpoint is not None:
            self._final_checkpoint._saved.clear()

    def save_final_now(self, engine: Engine) -> Path | None:
        """Write the final file (``model.pt``) now, as ``COMPLETED`` will again; ``None`` without ``save_final``."""
        if self._final_checkpoint is None:
            return None
        self._delete_previous_final_ckpt()
        self._final_checkpoint(engine)
        return Path(self.save_dir) / (self._final_filename or self._final_checkpoint.last_checkpoint)


def _last_iteration(engine: Engine, _event: int) -> bool:
    return engine.state.iteration == (engine.state.max_epochs or 0) * (engine.state.epoch_length or 0)


def _last_epoch(engine: Engine, _event: int) -> bool:
    return engine.state.epoch == engine.state.max_epochs


def _savers(engine: Engine | None) -> list[AtomicCheckpointSaver]:
    """The :class:`AtomicCheckpointSaver` handlers attached to ``engine``."""
    found: list[AtomicCheckpointSaver] = []
    for handlers in getattr(engine, "_event_handlers", {}).values():
        for handler, *_ in handlers:
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, AtomicCheckpointSaver) and owner not in found:
                found.append(owner)
    return found


def attach_model_metadata(
    trainer: Engine,
    evaluator: Engine | None,
    checkpointer: TrainingCheckpointer | None,
    sections: Mapping[str, Any],
    experiment: str | None = None,
) -> dict[str, Any]:
    """Make every file the run writes describe the model (module docstring).

    Args:
        trainer: the training engine (its ``model.pt`` saver).
        evaluator: the validation engine (its ``model_best.pt`` saver), or ``None``.
        checkpointer: the run's :class:`TrainingCheckpointer`, whose ``run_id`` the files record (read at each save,
            so a resumed run keeps its id), or ``None``.
        sections: the resolved config (at least ``model``, ``data`` and ``inference``).
        experiment: the experiment's name, or ``None``.

    Returns:
        The description (without the run id, which is filled in at each save).

    Example (a bundle's ``initialize``)::

        - "$pivot_monai.handlers.resume.attach_model_metadata(@train#trainer, @validate#evaluator,
           @train#checkpointer, {'model': @model, 'data': @data, 'inference': @inference})"
    """
    base = describe_model(sections, experiment=experiment)

    def describe() -> dict[str, Any]:
        return {**base, "run_id": None if checkpointer is None else checkpointer.run_id}

    for saver in _savers(trainer) + _savers(evaluator):
        saver.describe = describe
    if checkpointer is not None:
        checkpointer.describe = describe
    return base
