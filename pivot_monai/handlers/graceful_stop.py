"""Graceful stop of a training run on SIGTERM / SIGINT: finish the iteration, write a checkpoint, exit cleanly.

:class:`GracefulStop` installs handlers for ``SIGTERM`` and ``SIGINT`` (main thread only) when the run starts. The
first signal only sets a flag and logs that the run will stop; the trainer finishes the iteration it is in, then the
handler writes a checkpoint through the :class:`~pivot_monai.handlers.resume.TrainingCheckpointer` (the periodic one
if it was just written), logs one line::

    stopped by SIGTERM at epoch 3, iteration 57: checkpoint runs/a/checkpoint_epoch=3_iteration=57.pt; run the same
    command again to resume (automatic), or pass --restart to start over

and ends the run (``engine.terminate()``: ``COMPLETED`` handlers such as the ``model.pt`` saver still run, and the
bundle's ``finalize`` closes TensorBoard and the process group). The bundle's last ``finalize`` step,
:func:`exit_if_stopped`, then exits with **status 128 + signal number** (143 for SIGTERM, 130 for SIGINT), the status
a shell reports for a process ended by that signal, after the checkpoint is safely on disk. A signal received while
validation runs, or during an epoch's last iteration, takes effect when the epoch completes (after its validation,
LR step and periodic checkpoint), so the resumed run continues exactly at the next epoch.

A second signal stops at once: the default action of that signal is restored and the signal re-raised, so the
process dies of it (Python's ``returncode`` ``-15`` / ``-2``) without another checkpoint.

Under DDP every rank checks, after each iteration, whether any rank was signalled (one ``all_reduce``), so all ranks
stop after the same iteration; rank 0 writes the checkpoint. In-process callers (the API, tests) can call
:meth:`GracefulStop.request` instead of sending a signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

__all__ = ["GracefulStop", "exit_if_stopped", "stop_exit_status"]

_SIGNALS = ("SIGTERM", "SIGINT")


def stop_exit_status(signum: int) -> int:
    """The documented exit status of a run stopped by signal ``signum``: ``128 + signum`` (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


class GracefulStop:
    """Stop training after the current iteration on SIGTERM/SIGINT, with a checkpoint (module docstring).

    Args:
        checkpointer: the :class:`~pivot_monai.handlers.resume.TrainingCheckpointer` that writes the checkpoint;
            ``None`` stops without one (logged).
        signals: names of the signals to handle. Default ``("SIGTERM", "SIGINT")``.
        resume_hint: how to resume, for the log line. Default: run the same command again (automatic resume).
        name: logger name. Default this module's.

    Raises:
        ValueError: an unknown signal name.

    Example:
        >>> stop = GracefulStop(checkpointer)
        >>> stop.attach(trainer)    # after the checkpointer
    """

    def __init__(
        self,
        checkpointer: Any = None,
        signals: tuple[str, ...] | list[str] = _SIGNALS,
        resume_hint: str | None = None,
        name: str | None = None,
    ) -> None:
        unknown = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if unknown:
            raise ValueError(f"GracefulStop signals must be names such as SIGTERM or SIGINT, got {unknown}")
        self.checkpointer = checkpointer
        self.signals = tuple(getattr(signal, str(s)) for s in signals)
        self.resume_hint = resume_hint or (
            "run the same command again to resume (automatic), or pass --restart to start over"
        )
        self.logger = logging.getLogger(name or __name__)
        self.signum: int | None = None  # the first signal received
        self.stopped = False  # whether this handler ended the run
        self.checkpoint: Any = None  # the file written on stop
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------------------ signals
    def install(self) -> bool:
        """Install the signal handlers (the main thread only; returns whether they were installed)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return False
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def uninstall(self, *_: Any) -> None:
        """Put the previous signal handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop after the current iteration, as the first ``signum`` would."""
        if self.signum is None:
            self.signum = int(signum)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: stop now, by the signal itself
            self.logger.warning("second %s: stopping at once, without a checkpoint", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = int(signum)
        self.logger.warning(
            "%s received: stopping after the current iteration and writing a checkpoint (send it again to stop at "
            "once)",
            name,
        )

    # ------------------------------------------------------------------------------------------------ engine
    def attach(self, engine: Engine) -> None:
        """Install the signal handlers when the run starts and check the flag after every iteration and epoch;
        restore the previous handlers when the run ends."""
        engine.add_event_handler(Events.STARTED, lambda _: self.install())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.uninstall)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _requested(self) -> bool:
        flag = self.signum is not None
        if idist.get_world_size() > 1:  # every rank stops after the same iteration
            signum = torch.tensor([self.signum or 0], dtype=torch.int64, device=idist.device())
            signum = int(idist.all_reduce(signum, op="MAX").item())
            if signum and self.signum is None:
                self.signum = signum
            flag = signum > 0
        return flag

    def iteration_completed(self, engine: Engine) -> None:
        """Stop inside an epoch; after its last iteration, wait for ``EPOCH_COMPLETED`` instead, so that epoch's
        validation, LR step and periodic checkpoint happen as in an uninterrupted run."""
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:
            return
        self(engine)

    def __call__(self, engine: Engine) -> None:
        """Write the checkpoint and end the run if a stop was asked for (``EPOCH_COMPLETED``, or via
        :meth:`iteration_completed`)."""
        if self.stopped or not self._requested():
            return
        self.stopped = True
        name = signal.Signals(self.signum or signal.SIGTERM).name
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        if self.checkpointer is None:
            self.logger.warning("stopped by %s at %s: no checkpointer configured, nothing saved", name, where)
        else:
            self.checkpoint = self.checkpointer.save(engine)
            if idist.get_rank() == 0:
                self.logger.warning(
                    "stopped by %s at %s: checkpoint %s; %s", name, where, self.checkpoint, self.resume_hint
                )
        engine.terminate()

    def _on_exception(self, engine: Engine, err: BaseException) -> None:
        self.uninstall()
        raise err

    @property
    def exit_status(self) -> int | None:
        """``128 + signal`` when this handler stopped the run, else ``None``."""
        return stop_exit_status(self.signum) if self.stopped and self.signum is not None else None


def exit_if_stopped(stop: GracefulStop | None) -> None:
    """The bundle's last ``finalize`` step: exit with :attr:`GracefulStop.exit_status` when a signal stopped the run.

    Raises:
        SystemExit: ``128 + signal number`` after a graceful stop; nothing happens otherwise.
    """
    if stop is not None and stop.exit_status is not None:
        raise SystemExit(stop.exit_status)
