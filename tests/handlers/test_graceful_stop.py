"""GracefulStop on a dummy ignite Engine, with real signals sent to this process."""

from __future__ import annotations

import os
import signal

import pytest
from ignite.engine import Engine, Events

from pivot_monai.handlers.graceful_stop import GracefulStop, exit_if_stopped, stop_exit_status


class _Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, engine):
        self.saved.append((engine.state.epoch, engine.state.iteration))
        return f"ckpt_{engine.state.iteration}.pt"


def _engine(stop_at: int | None, signum=signal.SIGTERM) -> Engine:
    def step(engine, batch):
        if engine.state.iteration == stop_at:
            os.kill(os.getpid(), signum)
        return batch

    return Engine(step)


def test_sigterm_finishes_the_iteration_checkpoints_and_exits_with_143(caplog):
    engine, ckpt = _engine(stop_at=3), _Checkpointer()
    stop = GracefulStop(ckpt)
    stop.attach(engine)
    previous = signal.getsignal(signal.SIGTERM)
    with caplog.at_level("WARNING"):
        engine.run(range(5), max_epochs=4)
    assert engine.state.iteration == 3 and ckpt.saved == [(1, 3)]
    assert stop.exit_status == 143 == stop_exit_status(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored when the run ends
    lines = [r.getMessage() for r in caplog.records if "stopped by SIGTERM" in r.getMessage()]
    assert len(lines) == 1 and "epoch 1, iteration 3" in lines[0] and "ckpt_3.pt" in lines[0] and "resume" in lines[0]
    with pytest.raises(SystemExit) as exc:
        exit_if_stopped(stop)
    assert exc.value.code == 143


def test_sigint_gives_130_and_no_keyboard_interrupt():
    engine, ckpt = _engine(stop_at=2, signum=signal.SIGINT), _Checkpointer()
    stop = GracefulStop(ckpt)
    stop.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert ckpt.saved == [(1, 2)] and stop.exit_status == 130


def test_a_signal_in_the_last_iteration_waits_for_the_end_of_the_epoch():
    engine, ckpt = _engine(stop_at=5), _Checkpointer()
    completed = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: completed.append(e.state.epoch))
    stop = GracefulStop(ckpt)
    stop.attach(engine)
    engine.run(range(5), max_epochs=3)
    assert completed == [1] and ckpt.saved == [(1, 5)] and engine.state.epoch == 1


def test_no_signal_no_checkpoint_and_no_exit():
    engine, ckpt = _engine(stop_at=None), _Checkpointer()
    stop = GracefulStop(ckpt)
    stop.attach(engine)
    engine.run(range(3), max_epochs=2)
    assert engine.state.iteration == 6 and ckpt.saved == [] and stop.exit_status is None
    exit_if_stopped(stop)  # returns


def test_request_stops_without_a_signal():
    ckpt = _Checkpointer()
    stop = GracefulStop(ckpt)
    engine = Engine(lambda e, b: stop.request() if e.state.iteration == 2 else None)
    stop.attach(engine)
    engine.run(range(4), max_epochs=2)
    assert ckpt.saved == [(1, 2)] and stop.exit_status == 143


def test_unknown_signal_name_is_a_clear_error():
    with pytest.raises(ValueError, match="SIGTERM or SIGINT.*SIGNOPE"):
        GracefulStop(None, signals=("SIGNOPE",))
