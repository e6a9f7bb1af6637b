from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from pivot_monai.handlers.validation import ValidationLossHandler
from pivot_monai.losses import build_loss
from pivot_monai.transforms.targets import TARGET_KEYS, NoduleTargetsd

SPACING = (2.0, 2.0, 2.0)


def _make_scan(shape=(12, 10, 14), centre=(6, 5, 7), radius=2, diameter=8.0, malignant=1.0):
    """``(label (1, X, Y, Z) with nodule id 1, its (4, 7) nodule table)``; no nodule when ``radius`` is 0."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    inside = ((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2
    label = torch.as_tensor((inside & (radius > 0)).astype(np.float32))[None]
    table = torch.zeros(4, 7)
    if radius > 0:
        table[0] = torch.tensor([1.0, 2.0, 3.0, diameter, malignant, 1.0, 1.0])
    table[1] = torch.tensor([9.0, 9.0, 9.0, 6.0, -1.0, 2.0, 0.0])  # an excluded finding: not a target
    return label, table


def _logits(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "heatmap": torch.rand((1, 1, *shape), generator=g) * 8 - 4,
        "diameter": torch.rand((1, 1, *shape), generator=g) * 10,
        "malignancy": torch.rand((1, 1, *shape), generator=g) * 8 - 4,
    }


def _eval_output(logits):
    """What the evaluator holds for one scan: eval-mode probabilities, without the batch dimension."""
    return {
        "heatmap": torch.sigmoid(logits["heatmap"][0]),
        "diameter": logits["diameter"][0],
        "malignancy": torch.sigmoid(logits["malignancy"][0]),
    }


def _targets(label, diameter=8.0, malignant=1.0):
    made = NoduleTargetsd(spacing=SPACING)(
        {"label": label, "nodule_diameters": np.array([0.0, diameter]), "nodule_malignancy": np.array([-1, malignant])}
    )
    return {k: made[k][None] for k in TARGET_KEYS}


def _run_round(handler, scans):
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.epoch = 1
    engine.fire_event(Events.EPOCH_STARTED)
    for label, table, pred in scans:
        engine.state.batch = [{"label": label, "nodules": table}]
        engine.state.output = [{"pred": pred, "label": {"nodules": table}}]
        engine.fire_event(Events.ITERATION_COMPLETED)
    engine.fire_event(Events.EPOCH_COMPLETED)
    return engine.state.metrics


def test_validation_loss_is_the_training_loss_of_the_same_logits_and_targets():
    label, table = _make_scan()
    logits = _logits(label.shape[1:], seed=0)
    expected = build_loss()
    total = float(expected(logits, _targets(label)))
    metrics = _run_round(ValidationLossHandler(build_loss(), spacing=SPACING), [(label, table, _eval_output(logits))])
    assert metrics["val_loss"] == pytest.approx(total, rel=1e-4)
    for name in ("detection", "regression", "classification"):
        assert metrics[f"val_loss_{name}"] == pytest.approx(float(expected.last_components[name]), rel=1e-4, abs=1e-7)
    assert metrics["val_loss_regression"] > 0 and metrics["val_loss_classification"] > 0


def test_validation_loss_is_the_mean_over_scans_and_restarts_each_round():
    with_nodule, empty = _make_scan(), _make_scan(radius=0)
    shape = with_nodule[0].shape[1:]
    preds = [_eval_output(_logits(shape, seed)) for seed in (1, 2)]
    single = [
        _run_round(ValidationLossHandler(build_loss(), spacing=SPACING), [(*scan, pred)])
        for scan, pred in zip((with_nodule, empty), preds)
    ]
    assert single[1]["val_loss_regression"] == 0.0  # a nodule-free scan has no diameter term
    handler = ValidationLossHandler(build_loss(), spacing=SPACING)
    _run_round(handler, [(*empty, preds[1])] * 3)  # an earlier round does not leak into the next
    both = _run_round(handler, [(*with_nodule, preds[0]), (*empty, preds[1])])
    for key in ("val_loss", "val_loss_detection", "val_loss_regression", "val_loss_classification"):
        assert both[key] == pytest.approx((single[0][key] + single[1][key]) / 2, rel=1e-6)


def test_validation_loss_at_output_stride_2_pads_odd_volumes_as_the_inferer_does():
    label, table = _make_scan(shape=(11, 10, 13))
    coarse = (6, 5, 7)  # ceil(size / 2)
    logits = _logits(coarse, seed=3)
    padded = {k: torch.nn.functional.pad(v, (0, 1, 0, 0, 0, 1)) for k, v in _targets(label).items()}
    expected = float(build_loss()(logits, padded))
    handler = ValidationLossHandler(build_loss(), spacing=SPACING, output_stride=2)
    assert _run_round(handler, [(label, table, _eval_output(logits))])["val_loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="does not match the label shape"):
        _run_round(handler, [(label, table, _eval_output(_logits((5, 5, 7), seed=3)))])


def test_validation_loss_arguments_are_checked():
    with pytest.raises(ValueError, match="output_stride"):
        ValidationLossHandler(build_loss(), output_stride=0)
    with pytest.raises(ValueError, match="eps"):
        ValidationLossHandler(build_loss(), eps=0.0)


def _ddp_round(rank: int, world_size: int, init_file: str, scans_per_rank: list[int], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        label, table = _make_scan()
        scans = [(label, table, _eval_output(_logits(label.shape[1:], seed))) for seed in range(scans_per_rank[rank])]
        metrics = _run_round(ValidationLossHandler(build_loss(), spacing=SPACING), scans)
        torch.save(metrics, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes (~40 s on 2 cores); the bundle's 2-process test covers the usual path
def test_validation_loss_is_gathered_over_ranks_a_rank_without_scans_included(tmp_path):
    import torch.multiprocessing as mp

    label, table = _make_scan()
    # rank 0 holds both scans (seeds 0, 1), rank 1 none: every rank must still join the reduction
    mp.spawn(_ddp_round, args=(2, str(tmp_path / "init"), [2, 0], str(tmp_path / "m")), nprocs=2, join=True)
    scans = [(label, table, _eval_output(_logits(label.shape[1:], seed))) for seed in range(2)]
    expected = _run_round(ValidationLossHandler(build_loss(), spacing=SPACING), scans)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"m.{rank}")
        assert got == pytest.approx(expected, rel=1e-6)
