"""Training stages: the size-based curriculum and progressive patch/batch sizes as one epoch schedule.

``training.curriculum`` draws positive crops only from nodules at least ``min_diameter`` mm wide, stage by stage;
``training.progressive`` switches the patch size and the batch size. Both are lists of stages with a number of
``epochs`` each; the last stage of a list lasts until the end of training. :class:`StageSchedule` merges the two lists
into one schedule (a stage boundary of either list is a boundary of the schedule) and answers "which stage is epoch
``e`` in?" from the epoch alone, so a resumed run lands in the right stage without extra state.

:class:`StageState` is the small mutable object that the crop transforms read (the current minimum diameter and
patch size); :class:`~pivot_monai.handlers.curriculum.StageHandler` writes it and rebuilds the training
``DataLoader`` (:func:`rebuild_dataloader`) whenever it changes. Nothing here imports ignite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = [
    "CURRICULUM_STRATEGIES",
    "CurriculumStage",
    "ProgressiveStage",
    "Stage",
    "StageSchedule",
    "StageState",
    "parse_curriculum",
    "parse_progressive",
    "rebuild_dataloader",
]

CURRICULUM_STRATEGIES = ("size_based",)
_CURRICULUM_KEYS = ("enabled", "strategy", "stages")
_PROGRESSIVE_KEYS = ("enabled", "stages")


@dataclass(frozen=True)
class CurriculumStage:
    """``epochs`` epochs of positive crops from nodules ``>= min_diameter`` mm."""

    epochs: int
    min_diameter: float


@dataclass(frozen=True)
class ProgressiveStage:
    """``epochs`` epochs with ``patch_size`` (3 ints) patches in batches of ``batch_size`` volumes."""

    epochs: int
    patch_size: tuple[int, ...]
    batch_size: int


@dataclass(frozen=True)
class Stage:
    """The settings in force during one epoch.

    Attributes:
        index: position in the merged schedule (0-based).
        min_diameter: smallest nodule diameter (mm) of positive crops; 0 keeps every nodule.
        patch_size: network input size, or ``None`` for the static ``data.patch_size``.
        batch_size: volumes per batch, or ``None`` for the static ``training.batch_size``.
    """

    index: int = 0
    min_diameter: float = 0.0
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None


def _stage_list(cfg: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    stages = cfg.get("stages")
    if not isinstance(stages, Sequence) or isinstance(stages, str) or not stages:
        raise ValueError(f"{key}.stages must be a non-empty list of stages, got {stages!r}")
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping):
            raise ValueError(f"{key}.stages[{i}] must be a mapping, got {stage!r}")
    return list(stages)


def _epochs(stage: Mapping[str, Any], where: str) -> int:
    epochs = stage.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{where}.epochs must be an integer >= 1, got {epochs!r}")
    return epochs


def _check_keys(cfg: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {list(valid)}")


def parse_curriculum(cfg: Mapping[str, Any] | None) -> list[CurriculumStage]:
    """Stages of ``training.curriculum``; an empty list when it is missing or disabled.

    Raises:
        ValueError: unknown ``training.curriculum.strategy`` or an invalid stage, naming the key.
    """
    cfg = dict(cfg or {})
    _check_keys(cfg, _CURRICULUM_KEYS, "training.curriculum")
    if not cfg.get("enabled", False):
        return []
    strategy = cfg.get("strategy", "size_based")
    if strategy not in CURRICULUM_STRATEGIES:
        raise ValueError(f"training.curriculum.strategy must be one of {list(CURRICULUM_STRATEGIES)}, got {strategy!r}")
    out = []
    for i, stage in enumerate(_stage_list(cfg, "training.curriculum")):
        where = f"training.curriculum.stages[{i}]"
        _check_keys(stage, ("epochs", "min_diameter"), where)
        min_d = stage.get("min_diameter", 0.0)
        if isinstance(min_d, bool) or not isinstance(min_d, (int, float)) or min_d < 0:
            raise ValueError(f"{where}.min_diameter must be a number of mm >= 0, got {min_d!r}")
        out.append(CurriculumStage(_epochs(stage, where), float(min_d)))
    return out


def parse_progressive(cfg: Mapping[str, Any] | None, depth: int = 4) -> list[ProgressiveStage]:
    """Stages of ``training.progressive``; an empty list when it is missing or disabled.

    Args:
        cfg: the ``training.progressive`` section.
        depth: ``model.depth``; every patch size must be divisible by ``2 ** depth``.

    Raises:
        ValueError: an invalid stage, e.g. a patch size not divisible by ``2 ** depth``, naming the key.
    """
    cfg = dict(cfg or {})
    _check_keys(cfg, _PROGRESSIVE_KEYS, "training.progressive")
    if not cfg.get("enabled", False):
        return []
    divisor = 2 ** int(depth)
    out = []
    for i, stage in enumerate(_stage_list(cfg, "training.progressive")):
        where = f"training.progressive.stages[{i}]"
        _check_keys(stage, ("epochs", "patch_size", "batch_size"), where)
        size = stage.get("patch_size")
        size = [size] * 3 if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(size, Sequence) or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"{where}.patch_size must be 3 positive integers, got {stage.get('patch_size')!r}")
        if any(s % divisor for s in size):
            raise ValueError(
                f"{where}.patch_size {list(size)} must be divisible by 2 ** model.depth = {divisor} "
                f"(model.depth={depth}); use e.g. {[max(divisor, s // divisor * divisor) for s in size]}"
            )
        batch = stage.get("batch_size")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{where}.batch_size must be an integer >= 1, got {batch!r}")
        out.append(ProgressiveStage(_epochs(stage, where), tuple(int(s) for s in size), batch))
    return out


def _index_at(epochs: Sequence[int], epoch: int) -> int:
    """Index of the stage holding 1-based ``epoch``; past the end, the last stage."""
    end = 0
    for i, n in enumerate(epochs):
        end += n
        if epoch <= end:
            return i
    return len(epochs) - 1


class StageSchedule:
    """The merged curriculum + progressive schedule.

    Args:
        curriculum: curriculum stages (empty: no minimum diameter).
        progressive: progressive stages (empty: static patch and batch sizes).

    Example:
        >>> s = StageSchedule([CurriculumStage(2, 8.0), CurriculumStage(1, 0.0)],
        ...                   [ProgressiveStage(1, (32, 32, 32), 4), ProgressiveStage(9, (64, 64, 64), 2)])
        >>> [(s.at(e).index, s.at(e).min_diameter, s.at(e).batch_size) for e in (1, 2, 3, 10)]
        [(0, 8.0, 4), (1, 8.0, 2), (2, 0.0, 2), (2, 0.0, 2)]
    """

    def __init__(
        self, curriculum: Sequence[CurriculumStage] = (), progressive: Sequence[ProgressiveStage] = ()
    ) -> None:
        self.curriculum, self.progressive = tuple(curriculum), tuple(progressive)
        ends = set()
        for stages in (self.curriculum, self.progressive):
            total = 0
            for stage in stages[:-1]:
                total += stage.epochs
                ends.add(total)
        self._boundaries = sorted(ends)  # last epoch of every merged stage but the final one

    @classmethod
    def from_config(
        cls, curriculum: Mapping[str, Any] | None, progressive: Mapping[str, Any] | None, depth: int = 4
    ) -> StageSchedule:
        """Schedule from the ``training.curriculum`` and ``training.progressive`` sections (see the parsers)."""
        return cls(parse_curriculum(curriculum), parse_progressive(progressive, depth))

    @property
    def enabled(self) -> bool:
        """Whether any stage list is configured."""
        return bool(self.curriculum or self.progressive)

    def at(self, epoch: int) -> Stage:
        """The :class:`Stage` of 1-based ``epoch`` (epochs before 1 count as epoch 1)."""
        epoch = max(int(epoch), 1)
        index = sum(1 for b in self._boundaries if epoch > b)
        min_d, patch, batch = 0.0, None, None
        if self.curriculum:
            min_d = self.curriculum[_index_at([s.epochs for s in self.curriculum], epoch)].min_diameter
        if self.progressive:
            p = self.progressive[_index_at([s.epochs for s in self.progressive], epoch)]
            patch, batch = p.patch_size, p.batch_size
        return Stage(index, min_d, patch, batch)

    def max_patch_size(self, default: Sequence[int]) -> tuple[int, ...]:
        """Largest patch size per axis over the stages and ``default``."""
        sizes = [tuple(default)] + [s.patch_size for s in self.progressive]
        return tuple(max(s[i] for s in sizes) for i in range(len(sizes[0])))


class StageState:
    """The stage the training transforms read; :meth:`apply` changes it.

    Data-loader workers hold copies of this object made when they start, so whoever calls :meth:`apply` must
    restart them (:func:`rebuild_dataloader`) for the change to reach the crops.

    Attributes:
        stage: the current :class:`Stage` (the default stage until the first :meth:`apply`).
    """

    def __init__(self) -> None:
        self.stage = Stage(index=-1)

    @property
    def min_diameter(self) -> float:
        return self.stage.min_diameter

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        return self.stage.patch_size

    def apply(self, stage: Stage) -> bool:
        """Switch to ``stage``; returns whether anything changed."""
        changed = stage != self.stage
        self.stage = stage
        return changed

    def crop_size(self, default: Sequence[int], margin: int = 0) -> tuple[int, ...]:
        """``patch_size + 2 * margin`` of the current stage, or ``default`` when the stage sets no patch size."""
        if self.stage.patch_size is None:
            return tuple(int(s) for s in default)
        return tuple(int(s) + 2 * int(margin) for s in self.stage.patch_size)

    def __repr__(self) -> str:
        return f"StageState({self.stage})"


def rebuild_dataloader(loader: DataLoader, batch_size: int | None = None) -> DataLoader:
    """A new loader like ``loader`` (same class, dataset, sampler and worker settings) with ``batch_size``.

    The sampler object is reused, so a ``DistributedSampler`` keeps its shard and the ``set_epoch`` hook registered
    on it; a shuffling loader keeps shuffling. New workers start with the current state of the dataset's transforms.
    The new loader gets its own generator seeded from ``loader``'s (or the global) generator: MONAI's ``DataLoader``
    re-seeds the dataset's transforms from it and resets it, which would otherwise rewind the global torch RNG.

    Raises:
        TypeError: ``loader`` is not a ``torch.utils.data.DataLoader``.
        ValueError: ``batch_size`` < 1, or the loader uses a ``batch_sampler`` (its batch size cannot be changed).
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"training.progressive needs a torch DataLoader to rebuild, got {type(loader).__name__}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"training.progressive batch_size must be >= 1, got {batch_size}")
    if loader.batch_size is None:
        raise ValueError(
            "training.progressive cannot change the batch size of a DataLoader built with a "
            "batch_sampler; build it with batch_size and sampler instead"
        )
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item())
    kwargs: dict[str, Any] = {
        "batch_size": int(batch_size or loader.batch_size),
        "sampler": loader.sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "generator": torch.Generator().manual_seed(seed),
    }
    if loader.num_workers > 0:
        kwargs.update(
            prefetch_factor=loader.prefetch_factor,
            persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context,
        )
    return type(loader)(loader.dataset, **kwargs)
