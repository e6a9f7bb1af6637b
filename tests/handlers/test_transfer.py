"""Pretrained loading with a key report, encoder freezing (optimiser and BatchNorm) and UnfreezeEncoderHandler."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

from pivot_monai.handlers.transfer import PretrainedLoader, UnfreezeEncoderHandler
from pivot_monai.networks import PivotDetector
from pivot_monai.networks.transfer import encoder_is_frozen, load_pretrained, set_encoder_frozen


def _net(**kwargs) -> PivotDetector:
    torch.manual_seed(0)
    return PivotDetector(base_filters=4, depth=2, **kwargs)


def _clone(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, params))


def _encoder_bn(net: PivotDetector) -> torch.nn.BatchNorm3d:
    return next(m for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm3d))


def _train_step(net, optimizer, x=None) -> None:
    """One step as MONAI's SupervisedTrainer does it: train(), zero_grad (keeps zero tensors), forward, step."""
    net.train()
    optimizer.zero_grad(set_to_none=False)
    x = torch.randn(2, 1, 8, 8, 8) if x is None else x
    out = net(x)
    (out["heatmap"].mean() + out["diameter"].mean()).backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------------ loading
def test_matching_checkpoint_loads_every_tensor(tmp_path):
    source, target = _net(), PivotDetector(base_filters=4, depth=2)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    report = load_pretrained(target, tmp_path / "model.pt", strict=True)
    assert report.ok and len(report.loaded) == len(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_mismatches_are_listed_and_skipped_when_not_strict(caplog):
    source = _net(head_channels=8)  # heads with an extra block: unexpected keys, wider output convolutions
    state = source.state_dict()
    state["encoder.0.conv_0.conv.weight"] = torch.zeros(5, 1, 3, 3, 3)  # wrong shape
    del state["decoder.0.convs.conv_0.conv.weight"]  # missing
    target = PivotDetector(base_filters=4, depth=2)
    before = target.state_dict()["encoder.0.conv_0.conv.weight"].clone()
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(target, state, strict=False)
    assert report.missing == ["decoder.0.convs.conv_0.conv.weight"]
    assert sorted(m[0] for m in report.mismatched) == [
        "diameter_head.output.weight",
        "encoder.0.conv_0.conv.weight",
        "heatmap_head.output.weight",
        "malignancy_head.output.weight",
    ]
    assert report.unexpected and all(
        k.startswith(("heatmap_head.", "diameter_head.", "malignancy_head.")) for k in report.unexpected
    )
    assert torch.equal(target.state_dict()["encoder.0.conv_0.conv.weight"], before)  # skipped, not loaded
    assert torch.equal(
        target.state_dict()["encoder.1.convs.conv_0.conv.weight"],
        source.state_dict()["encoder.1.convs.conv_0.conv.weight"],
    )
    assert "missing in checkpoint (1)" in caplog.text and "shape mismatch (4)" in caplog.text


def test_strict_loading_raises_with_the_list_of_problems():
    state = _net().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"training.pretrained.strict .*unexpected in checkpoint \(1\): extra.weight"):
        load_pretrained(PivotDetector(base_filters=4, depth=2), state, strict=True)


def test_data_parallel_prefix_is_removed():
    state = {f"module.{k}": v for k, v in _net().state_dict().items()}
    assert load_pretrained(PivotDetector(base_filters=4, depth=2), state, strict=True).ok


def test_pretrained_loader_handler_checks_the_file_and_loads_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="training.pretrained.checkpoint"):
        PretrainedLoader(_net(), tmp_path / "missing.pt")
    torch.save(_net().state_dict(), tmp_path / "model.pt")
    target = PivotDetector(base_filters=4, depth=2)
    handler = PretrainedLoader(target, tmp_path / "model.pt", strict=True)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert handler.report is not None and handler.report.ok


# ------------------------------------------------------------------------------------------------ freezing
def test_frozen_encoder_gets_no_gradients_and_adamw_leaves_it_alone():
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)  # built over all parameters
    _train_step(net, optimizer)  # encoder grads now exist (as zero tensors after the next zero_grad)
    set_encoder_frozen(net, True)
    encoder, decoder, heads = (
        _clone(net.encoder_parameters()),
        _clone(net.decoder_parameters()),
        _clone(net.head_parameters()),
    )
    for _ in range(2):
        _train_step(net, optimizer)
        assert all(p.grad is None for p in net.encoder_parameters())
    assert not _changed(encoder, net.encoder_parameters())  # neither gradient step nor weight decay
    assert _changed(decoder, net.decoder_parameters()) and _changed(heads, net.head_parameters())


def test_zero_gradients_would_still_decay_weights():
    """Why freezing sets grads to None: AdamW decays parameters whose grad is a zero tensor."""
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    optimizer.step()
    assert not torch.equal(p.detach(), torch.ones(3))
    p.grad = None
    before = p.detach().clone()
    optimizer.step()
    assert torch.equal(p.detach(), before)


def test_encoder_batchnorm_statistics_stay_still_while_frozen_and_update_after():
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    bn = _encoder_bn(net)
    set_encoder_frozen(net, True)
    mean = bn.running_mean.clone()
    _train_step(net, optimizer, torch.randn(2, 1, 8, 8, 8) * 5 + 3)  # net.train() is called inside
    assert net.training and not bn.training and torch.equal(bn.running_mean, mean)
    decoder_bn = next(m for m in net.decoder.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert decoder_bn.training
    set_encoder_frozen(net, False)
    assert bn.training and not encoder_is_frozen(net)
    _train_step(net, optimizer, torch.randn(2, 1, 8, 8, 8) * 5 + 3)
    assert not torch.equal(bn.running_mean, mean)
    assert all(p.grad is not None for p in net.encoder_parameters())


def _training_engine(net, freeze_epochs: int):
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    engine = Engine(lambda e, b: _train_step(net, optimizer))
    handler = UnfreezeEncoderHandler(net, freeze_epochs=freeze_epochs)
    handler.attach(engine)
    record: dict[int, dict] = {}
    groups = {"encoder": net.encoder_parameters, "decoder": net.decoder_parameters, "heads": net.head_parameters}

    @engine.on(Events.EPOCH_STARTED)
    def _before(e):
        record[e.state.epoch] = {"before": {k: _clone(f()) for k, f in groups.items()}}

    @engine.on(Events.EPOCH_COMPLETED)
    def _after(e):
        rec = record[e.state.epoch]
        before = rec.pop("before")
        rec["changed"] = {k: _changed(before[k], f()) for k, f in groups.items()}
        rec["encoder_grad"] = all(p.grad is not None for p in net.encoder_parameters())

    return engine, record


def test_unfreeze_handler_trains_encoder_only_after_the_frozen_epochs():
    net = _net()
    engine, record = _training_engine(net, freeze_epochs=2)
    engine.run([0, 1], max_epochs=4)
    assert [record[e]["encoder_grad"] for e in (1, 2, 3, 4)] == [False, False, True, True]
    assert [record[e]["changed"]["encoder"] for e in (1, 2, 3, 4)] == [False, False, True, True]
    assert all(record[e]["changed"]["decoder"] and record[e]["changed"]["heads"] for e in (1, 2, 3, 4))


@pytest.mark.parametrize("resumed_epoch, expected", [(1, [False, True]), (3, [True, True])])
def test_unfreeze_handler_resumes_inside_or_after_the_frozen_phase(resumed_epoch, expected):
    net = _net()
    engine, record = _training_engine(net, freeze_epochs=2)
    engine.load_state_dict({"epoch": resumed_epoch, "max_epochs": resumed_epoch + 2, "epoch_length": 2})
    engine.run([0, 1])
    assert [record[e]["encoder_grad"] for e in sorted(record)] == expected


def test_unfreeze_handler_checks_its_arguments():
    with pytest.raises(ValueError, match="training.pretrained.freeze_epochs"):
        UnfreezeEncoderHandler(_net(), freeze_epochs=-1)
    with pytest.raises(TypeError, match="encoder_parameters"):
        UnfreezeEncoderHandler(torch.nn.Linear(2, 2), freeze_epochs=1)
