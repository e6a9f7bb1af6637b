"""TrainingCheckpointer on a dummy ignite Engine: resume modes, exact continuation, run separation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from pivot_monai.engines.checkpoint import CheckpointError, list_checkpoints
from pivot_monai.handlers.resume import TrainingCheckpointer, resume_mode


def _run(folder, epochs: int, resume="auto", stop_after: int | None = None, save_interval: int = 1, keep: int = 2):
    """Train a linear layer on random batches (the torch RNG drives the data) and return (weights, checkpointer)."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def step(engine, _):
        x = torch.randn(4, 3)
        loss = (net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if stop_after is not None and engine.state.iteration == stop_after:
            engine.terminate()

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: sched.step())
    engine.state.max_epochs, engine.state.epoch_length = epochs, 3  # as MONAI's Workflow sets them
    ckpt = TrainingCheckpointer(folder, net, opt, sched, save_interval=save_interval, keep_last_n=keep, resume=resume)
    ckpt.attach(engine)
    engine.run(range(3), max_epochs=epochs)
    return net.weight.detach().clone(), ckpt, engine


def test_a_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path):
    reference, _, _ = _run(tmp_path / "a", epochs=4)
    _run(tmp_path / "b", epochs=4, stop_after=7)  # dies in epoch 3; the last checkpoint is epoch 2
    weights, ckpt, engine = _run(tmp_path / "b", epochs=4)
    assert ckpt.resumed_from.name == "checkpoint_epoch=2.pt"
    assert torch.equal(weights, reference) and engine.state.epoch == 4


def test_checkpoints_of_a_resumed_run_continue_one_sequence(tmp_path):
    _run(tmp_path, epochs=2)
    _, first, _ = _run(tmp_path, epochs=4)
    names = [c.path.name for c in list_checkpoints(tmp_path)]
    assert names == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]  # keep_last_n=2 over both processes
    ids = {torch.load(c.path, weights_only=True)["pivot"]["run_id"] for c in list_checkpoints(tmp_path)}
    assert ids == {first.run_id}


def test_restart_moves_the_previous_runs_checkpoints_aside(tmp_path, caplog):
    _run(tmp_path, epochs=2)
    with caplog.at_level("INFO"):
        _, ckpt, engine = _run(tmp_path, epochs=1, resume=False)
    assert ckpt.resumed_from is None and engine.state.epoch == 1
    assert [c.path.name for c in list_checkpoints(tmp_path)] == ["checkpoint_epoch=1.pt"]
    archived = list((tmp_path / "previous_runs").rglob("checkpoint_epoch=*.pt"))
    assert sorted(p.name for p in archived) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert "starting over: moved 2 checkpoint(s)" in caplog.text


def test_auto_mode_says_in_the_log_that_it_resumed_and_how_to_start_over(tmp_path, caplog):
    _run(tmp_path, epochs=1)
    with caplog.at_level("INFO"):
        _run(tmp_path, epochs=2)
    assert "resuming from" in caplog.text and "automatic" in caplog.text and "--restart" in caplog.text


def test_resume_true_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="holds no readable checkpoint.*--restart"):
        _run(tmp_path, epochs=1, resume=True)


def test_a_finished_run_trains_no_further(tmp_path):
    reference, _, _ = _run(tmp_path, epochs=2)
    weights, ckpt, engine = _run(tmp_path, epochs=2)
    assert ckpt.resumed_from.name == "checkpoint_epoch=2.pt" and torch.equal(weights, reference)


def test_a_checkpoint_past_the_configured_epochs_is_an_error(tmp_path):
    _run(tmp_path, epochs=3)
    with pytest.raises(CheckpointError, match="epoch 3, past training.epochs=2"):
        _run(tmp_path, epochs=2)


def test_a_mid_epoch_save_is_named_by_its_iteration_and_resumes_there(tmp_path):
    _, ckpt, engine = _run(tmp_path, epochs=3, save_interval=0, stop_after=4)
    path = ckpt.save(engine)
    assert path.name == "checkpoint_epoch=2_iteration=4.pt" and ckpt.save(engine) == path  # not written twice
    _, ckpt2, engine2 = _run(tmp_path, epochs=3, save_interval=0)
    assert ckpt2.resumed_from == path and engine2.state.iteration == 9


@pytest.mark.parametrize(
    "value, expected", [("auto", "auto"), (True, "true"), (False, "false"), (None, "false"), ("RESTART", "false")]
)
def test_resume_values(value, expected):
    assert resume_mode(value) == expected


def test_a_bad_resume_value_names_the_key():
    with pytest.raises(TypeError, match="checkpointing.resume must be auto, true, false or a checkpoint path"):
        resume_mode(3)
