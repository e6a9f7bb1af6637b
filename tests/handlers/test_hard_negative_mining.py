"""HardNegativePool, the false-positive maths and HardNegativeMiningHandler on a dummy ignite engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.inferers import SimpleInferer

import pivot_monai.handlers.hard_negative_mining as hnm
from pivot_monai.handlers.hard_negative_mining import HardNegativeMiningHandler
from pivot_monai.transforms.hard_negatives import (
    HardNegativePool,
    false_positive_mask,
    merge_mined,
    select_false_positives,
)

SPACING = 2.0
SHAPE = (24, 24, 24)
NODULE_VOX, FP_VOX, WEAK_VOX = (6, 6, 6), (18, 16, 12), (12, 4, 20)


def _nodule_table(centre_vox=NODULE_VOX, diameter=8.0) -> torch.Tensor:
    table = torch.zeros(4, 7)
    table[0, :3] = torch.tensor(centre_vox, dtype=torch.float32) * SPACING
    table[0, 3], table[0, 5], table[0, 6] = diameter, 1.0, 1.0
    return table


class PeakNet(nn.Module):
    """Eval-mode stand-in for the detector: probability peaks of 0.9 (nodule), 0.8 (elsewhere) and 0.2 (weak)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heat = torch.zeros_like(x)
        for (i, j, k), p in ((NODULE_VOX, 0.9), (FP_VOX, 0.8), (WEAK_VOX, 0.2)):
            heat[..., i, j, k] = p * self.scale
        return {"heatmap": heat, "diameter": torch.full_like(x, 6.0)}


class Writer:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, float(value), int(step)))


def _dataset(n: int = 2) -> list[dict]:
    affine = torch.diag(torch.tensor([SPACING, SPACING, SPACING, 1.0], dtype=torch.float64))
    return [
        {
            "image": torch.zeros(1, *SHAPE),
            "nodules": _nodule_table(),
            "index_to_world": affine,
            "seriesuid": f"scan-{i}",
        }
        for i in range(n)
    ]


def _handler(pool=None, **kwargs) -> HardNegativeMiningHandler:
    kwargs = {"inferer": SimpleInferer(), "interval": 1, "score_threshold": 0.5, "spacing": (SPACING,) * 3, **kwargs}
    return HardNegativeMiningHandler(pool or HardNegativePool(pool_size=5), PeakNet().train(), _dataset(), **kwargs)


def _run(handler, epochs: int, data=None) -> Engine:
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0] if data is None else data, max_epochs=epochs)
    return engine


# ------------------------------------------------------------------------------------------------ pool
def test_pool_keeps_the_hardest_entries_per_scan_in_order():
    pool = HardNegativePool(pool_size=2)
    pool.update("a", [((1, 1, 1), 0.3), ((2, 2, 2), 0.9), ((3, 3, 3), 0.6)])
    assert pool.get("a") == [((2, 2, 2), 0.9), ((3, 3, 3), 0.6)]
    pool.add("a", [((4, 4, 4), 0.7), ((3, 3, 3), 0.95)])
    assert pool.get("a") == [((3, 3, 3), 0.95), ((2, 2, 2), 0.9)]
    pool.update("a", [])
    assert pool.get("a") == [] and len(pool) == 0 and pool.get("unknown") == []


def test_pool_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path):
    pool = HardNegativePool(pool_size=3)
    pool.update("a", [((1, 2, 3), 0.5), ((4, 5, 6), 0.75)])
    pool.update("b", [((7, 8, 9), 0.25)])
    torch.save({"hard_negative_pool": pool.state_dict()}, tmp_path / "ckpt.pt")
    restored = HardNegativePool(pool_size=3)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["hard_negative_pool"])
    assert restored.seriesuids() == ["a", "b"]
    assert restored.get("a") == pool.get("a") and restored.get("b") == pool.get("b")


def test_restored_pool_is_published_for_workers(tmp_path):
    pool = HardNegativePool(pool_size=3)
    pool.update("a", [((1, 2, 3), 0.5)])
    restored = HardNegativePool(pool_size=3, path=tmp_path / "pool.json")
    restored.load_state_dict(pool.state_dict())
    payload = json.loads((tmp_path / "pool.json").read_text())
    assert payload["token"] == restored.token and payload["entries"] == {"a": [[1, 2, 3, 0.5]]}


def test_a_copy_reads_updates_and_ignores_files_of_other_pools(tmp_path):
    import pickle

    pool = HardNegativePool(pool_size=3, path=tmp_path / "pool.json")
    worker_copy = pickle.loads(pickle.dumps(pool))  # what a spawned data-loader worker holds
    pool.update("a", [((1, 2, 3), 0.5)])
    pool.publish()
    assert worker_copy.get("a") == [((1, 2, 3), 0.5)]
    stranger = HardNegativePool(pool_size=3, path=tmp_path / "pool.json")  # e.g. a later run in the same folder
    assert stranger.get("a") == []


def test_pool_file_is_per_rank_under_torchrun(tmp_path, monkeypatch):
    pool = HardNegativePool(path=tmp_path / "pool.json")
    assert pool.file() == tmp_path / "pool.json"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert pool.file() == tmp_path / "pool.rank1.json"


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError, match="pool_size"):
        HardNegativePool(pool_size=0)


# ------------------------------------------------------------------------------------------------ maths
def test_false_positive_mask_uses_finding_radii_and_ignores_padding():
    table = np.zeros((3, 7))
    table[0] = [0, 0, 0, 10.0, 1, 1, 1]  # nodule, radius 5
    table[1] = [50, 0, 0, -1.0, -1, 2, 0]  # excluded finding without diameter: 10 mm
    world = np.array([[4.9, 0, 0], [5.1, 0, 0], [54.0, 0, 0], [0, 0, 0.0]])
    world[3] = [100, 100, 100]
    assert false_positive_mask(world, table).tolist() == [False, True, False, True]
    assert false_positive_mask(world, table, margin_mm=1.0).tolist() == [False, False, False, True]
    assert false_positive_mask(world, np.zeros((4, 7))).all()


def test_select_false_positives_thresholds_limits_and_clips():
    index = np.array([[1.2, 2.0, 3.0], [30.0, -2.0, 5.0], [9.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    score = np.array([0.9, 0.7, 0.95, 0.3])
    table = np.zeros((2, 7))
    table[0] = [9, 9, 9, 4.0, 1, 1, 1]
    entries = select_false_positives(index, score, index, table, shape=(20, 20, 20), score_threshold=0.5, limit=5)
    assert entries == [((1, 2, 3), 0.9), ((19, 0, 5), 0.7)]
    assert len(select_false_positives(index, score, index, table, (20, 20, 20), 0.0, limit=1)) == 1


def test_merge_is_independent_of_rank_order():
    a = [("s2", [((1, 1, 1), 0.4)]), ("s1", [((2, 2, 2), 0.9)])]
    b = [("s3", [((3, 3, 3), 0.5)]), ("s1", [((4, 4, 4), 0.95)])]
    assert merge_mined([a, b]) == merge_mined([b, a])
    assert [uid for uid, _ in merge_mined([a, b])] == ["s1", "s2", "s3"]
    assert dict(merge_mined([a, b]))["s1"] == [((4, 4, 4), 0.95), ((2, 2, 2), 0.9)]


# ------------------------------------------------------------------------------------------------ handler
def test_handler_pools_only_false_positives_and_logs_them():
    writer = Writer()
    handler = _handler(summary_writer=writer, interval=2)
    engine = _run(handler, epochs=5)
    pool = handler.pool
    assert pool.seriesuids() == ["scan-0", "scan-1"]
    assert pool.get("scan-0") == [(FP_VOX, pytest.approx(0.8))]  # nodule peak is a hit, the weak peak too low
    assert [s for s in writer.scalars if s[0] == "train/mining_false_positives"] == [
        ("train/mining_false_positives", 2, 2),
        ("train/mining_false_positives", 2, 4),
    ]
    assert ("train/mining_pool_size", 2.0, 4) in writer.scalars
    seconds = engine.state.mining.pop("seconds")
    assert engine.state.mining == {"false_positives": 2, "pool_size": 2, "scans": 2}
    assert 0 < seconds <= handler.total_seconds  # two rounds timed, the last one in the state
    assert handler.network.training  # train mode restored after mining


def test_handler_mines_every_interval_epochs_only():
    calls = []
    handler = _handler(interval=3)
    original = handler.mine_item
    handler.mine_item = lambda net, item: calls.append(item["seriesuid"]) or original(net, item)
    _run(handler, epochs=5)
    assert calls == ["scan-0", "scan-1"]  # epoch 3 only


def test_handler_skips_the_round_after_the_last_epoch():
    calls = []
    handler = _handler(interval=3)
    handler.mine_item = lambda net, item: calls.append(item["seriesuid"]) or []
    _run(handler, epochs=6)
    assert calls == ["scan-0", "scan-1"]  # epoch 3; epoch 6 ends training, nothing would use its pool


def test_subset_fraction_rotates_through_the_volumes_and_shards_by_rank():
    handler = _handler(subset_fraction=0.5)
    handler.dataset = _dataset(4)
    assert [handler.round_indices(r) for r in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert handler.round_indices(1, rank=1, world_size=2) == [3]


def test_entries_mined_on_other_ranks_reach_every_pool(monkeypatch):
    other_rank = [("scan-9", [((3, 3, 3), 0.99)])]
    monkeypatch.setattr(hnm.idist, "all_gather", lambda local: [local, other_rank])
    handler = _handler()
    _run(handler, epochs=2)  # mines after epoch 1 (not after the last)
    assert handler.pool.seriesuids() == ["scan-0", "scan-1", "scan-9"]


def test_workers_without_a_pool_file_are_refused():
    from torch.utils.data import DataLoader

    handler = _handler()
    with pytest.raises(ValueError, match="num_workers=1 needs a pool file"):
        _run(handler, epochs=1, data=DataLoader([0, 1], num_workers=1))


INVALID = [
    ({"interval": 0}, "interval"),
    ({"score_threshold": 1.0}, "score_threshold"),
    ({"subset_fraction": 0.0}, "subset_fraction"),
    ({"pool_size": 0}, "pool_size"),
]


@pytest.mark.parametrize("kwargs, key", INVALID)
def test_invalid_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=f"training.hard_negative_mining.{key}"):
        _handler(**kwargs)
