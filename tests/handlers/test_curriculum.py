"""Stage schedules (curriculum + progressive), StageState, loader rebuilding and StageHandler on a dummy engine."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from torch.utils.data import DistributedSampler

from pivot_monai.handlers.curriculum import StageHandler
from pivot_monai.transforms.stages import (
    CurriculumStage,
    ProgressiveStage,
    Stage,
    StageSchedule,
    StageState,
    parse_curriculum,
    parse_progressive,
    rebuild_dataloader,
)

CURRICULUM = {
    "enabled": True,
    "strategy": "size_based",
    "stages": [{"epochs": 2, "min_diameter": 8.0}, {"epochs": 2, "min_diameter": 0.0}],
}
PROGRESSIVE = {
    "enabled": True,
    "stages": [
        {"epochs": 1, "patch_size": [16, 16, 16], "batch_size": 4},
        {"epochs": 10, "patch_size": [32, 32, 32], "batch_size": 2},
    ],
}


class PatchDataset(torch.utils.data.Dataset):
    """Eight items whose size follows the shared stage, like the crop transforms."""

    def __init__(self, state: StageState) -> None:
        self.state = state

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1, *(self.state.patch_size or (8, 8, 8)))


# ------------------------------------------------------------------------------------------------ schedule
def test_merged_schedule_switches_at_either_lists_boundaries():
    schedule = StageSchedule.from_config(CURRICULUM, PROGRESSIVE, depth=4)
    stages = [schedule.at(e) for e in range(1, 7)]
    assert [s.index for s in stages] == [0, 1, 2, 2, 2, 2]  # boundaries after epoch 1 (progressive) and 2
    assert [s.min_diameter for s in stages] == [8.0, 8.0, 0.0, 0.0, 0.0, 0.0]
    assert [s.batch_size for s in stages] == [4, 2, 2, 2, 2, 2]
    assert stages[0].patch_size == (16, 16, 16) and stages[-1].patch_size == (32, 32, 32)
    assert schedule.at(0) == schedule.at(1) and schedule.at(1000) == stages[-1]


def test_disabled_sections_give_the_default_stage():
    schedule = StageSchedule.from_config({"enabled": False, "strategy": "bogus"}, {"enabled": False})
    assert not schedule.enabled and schedule.at(5) == Stage()


def test_unknown_curriculum_strategy_names_the_key():
    with pytest.raises(ValueError, match=r"training.curriculum.strategy .*'size_based'.*'loss_based'"):
        parse_curriculum({**CURRICULUM, "strategy": "loss_based"})


def test_patch_size_not_divisible_by_the_depth_is_refused():
    bad = {"enabled": True, "stages": [{"epochs": 1, "patch_size": [24, 24, 24], "batch_size": 2}]}
    with pytest.raises(
        ValueError,
        match=r"stages\[0\].patch_size \[24, 24, 24\] must be divisible by 2 \*\* "
        r"model.depth = 16",
    ):
        parse_progressive(bad, depth=4)
    assert parse_progressive(bad, depth=3)[0].patch_size == (24, 24, 24)


@pytest.mark.parametrize(
    "stage, match",
    [
        ({"epochs": 0, "min_diameter": 1}, r"stages\[0\].epochs"),
        ({"epochs": 1, "min_diameter": -1}, "min_diameter"),
        ({"epochs": 1, "min_diameter": 1, "extra": 1}, "unknown key"),
    ],
)
def test_invalid_curriculum_stages_name_the_key(stage, match):
    with pytest.raises(ValueError, match=match):
        parse_curriculum({"enabled": True, "stages": [stage]})


def test_stage_state_reports_changes_and_crop_sizes():
    state = StageState()
    assert state.crop_size((20, 20, 20), margin=4) == (20, 20, 20)
    assert state.apply(Stage(0, 8.0, (16, 16, 16), 4)) and not state.apply(Stage(0, 8.0, (16, 16, 16), 4))
    assert state.crop_size((20, 20, 20), margin=4) == (24, 24, 24) and state.min_diameter == 8.0


def test_rebuilt_loader_keeps_everything_but_the_batch_size():
    dataset = list(range(10))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, drop_last=True)
    new = rebuild_dataloader(loader, 4)
    assert type(new) is DataLoader and new.batch_size == 4 and new.sampler is sampler
    assert new.collate_fn is loader.collate_fn and new.drop_last and new.dataset is dataset
    assert [b.tolist() for b in new] == [[1, 3, 5, 7]]
    with pytest.raises(ValueError, match="batch_sampler"):
        rebuild_dataloader(DataLoader(dataset, batch_sampler=[[0, 1]]), 2)


# ------------------------------------------------------------------------------------------------ handler
def _engine_with_stages(schedule: StageSchedule, state: StageState):
    loader = DataLoader(PatchDataset(state), batch_size=2, shuffle=True)
    engine = Engine(lambda e, batch: tuple(batch.shape))
    seen: dict[int, list] = {}
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.setdefault(e.state.epoch, []).append(e.state.output)
    )
    StageHandler(schedule, state).attach(engine)
    return engine, loader, seen


def test_handler_switches_batch_and_patch_sizes_inside_the_run():
    state = StageState()
    schedule = StageSchedule(
        [CurriculumStage(2, 8.0), CurriculumStage(1, 0.0)],
        [ProgressiveStage(1, (4, 4, 4), 4), ProgressiveStage(2, (8, 8, 8), 8)],
    )
    engine, loader, seen = _engine_with_stages(schedule, state)
    engine.run(loader, max_epochs=3)
    # epoch_length stays len(loader) = 4 iterations per epoch, whatever the batch size
    assert seen[1] == [(4, 1, 4, 4, 4)] * 4 and seen[2] == [(8, 1, 8, 8, 8)] * 4 and seen[3] == seen[2]
    assert engine.state.epoch_length == 4 and engine.state.iteration == 12
    assert engine.state.dataloader.batch_size == 8 and state.min_diameter == 0.0


def test_handler_resumes_into_the_stage_of_the_next_epoch():
    state = StageState()
    schedule = StageSchedule((), [ProgressiveStage(2, (4, 4, 4), 4), ProgressiveStage(2, (8, 8, 8), 1)])
    engine, loader, seen = _engine_with_stages(schedule, state)
    engine.load_state_dict({"epoch": 2, "max_epochs": 3, "epoch_length": 4})  # as a checkpoint restores it
    engine.run(loader)
    assert list(seen) == [3] and seen[3] == [(1, 1, 8, 8, 8)] * 4


def test_handler_without_stages_leaves_the_loader_alone():
    state = StageState()
    engine, loader, seen = _engine_with_stages(StageSchedule(), state)
    engine.run(loader, max_epochs=1)
    assert engine.state.dataloader is loader and seen[1] == [(2, 1, 8, 8, 8)] * 4


def test_handler_checks_its_arguments():
    with pytest.raises(TypeError, match="StageSchedule"):
        StageHandler({"stages": []}, StageState())
