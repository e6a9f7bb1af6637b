"""Random-number-generator states for resumable training: Python, NumPy, torch (CPU and CUDA), the training
loader's generators and every MONAI random transform.

A checkpoint must hold these for a resumed run to draw the same crops, augmentations and shuffles as an
uninterrupted one. The states are converted to tensors and plain values so that ``torch.load(weights_only=True)``
reads them back. Transforms are found the way MONAI's ``set_rnd`` seeds them: every ``numpy.random.RandomState``
reachable through a MONAI or PIVOT object, list or dict under the dataset's ``transform``, keyed by its attribute
path, so a resumed run with the same config restores each transform's stream. Nothing here imports ignite.

**Loader workers.** With ``data.num_workers > 0`` the transforms run in the worker processes, whose streams the main
process cannot read. Persistent workers (the default) are started once and their streams run on from epoch to
epoch, so a resumed run's fresh workers draw other crops, and the DataLoader's extra draw of a worker base seed
shifts the shuffle too. :class:`ItemSeedSampler` and :class:`ItemSeededDataset` make every item's randomness a
function of the run's seed, the epoch and the item alone: the sampler shuffles with a generator of its own (saved in
the checkpoint) and hands each index a seed; the dataset re-seeds the transforms from it before transforming the
item, in whatever process that happens. A resumed run then continues bit for bit with any number of workers,
persistent or not, and 0 and 2 workers give the same batches. :class:`ItemSeededLoader` is MONAI's ``DataLoader``
with both in place (``_target_: pivot_monai.engines.rng.ItemSeededLoader`` for ``train#dataloader``).

**Stop signals.** ``timeout``, Slurm and a terminal's Ctrl-C signal the whole process group, loader workers included.
A worker killed by SIGTERM while the main process waits for its batch fails that batch ("DataLoader worker ...
exited unexpectedly") before the graceful stop (:mod:`pivot_monai.handlers.graceful_stop`) can finish the iteration
and write its checkpoint.
:func:`worker_init_ignoring_stop_signals` makes the workers ignore SIGINT, and SIGTERM from anyone but their parent:
the main process alone decides, and still ends its workers with SIGTERM when it exits (``multiprocessing``
terminates daemon workers at exit). Python's signal handlers cannot see who sent a signal, so a thread of the
worker takes SIGTERM with ``sigwaitinfo``, which reports the sender (Linux; elsewhere SIGTERM keeps its default).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "ItemSeedSampler",
    "ItemSeededDataset",
    "ItemSeededLoader",
    "capture_rng",
    "restore_rng",
    "transform_random_states",
    "worker_init_ignoring_stop_signals",
]

logger = logging.getLogger(__name__)

_WALK_MODULES = ("monai.", "pivot_monai.")


def _np_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
        "name": str(name),
    }


def _np_tuple(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(torch.as_tensor(state["keys"]).numpy(), dtype=np.uint32)
    return (state.get("name", "MT19937"), keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"]))


def _walk(obj: Any, path: str, seen: set[int], out: dict[str, np.random.RandomState], depth: int = 0) -> None:
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        out[path] = obj
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _walk(item, f"{path}[{i}]", seen, out, depth + 1)
        return
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _walk(obj[key], f"{path}.{key}", seen, out, depth + 1)
        return
    module = type(obj).__module__ or ""
    if not module.startswith(_WALK_MODULES) or not hasattr(obj, "__dict__"):
        return
    for key, value in vars(obj).items():
        if not key.startswith("__"):
            _walk(value, f"{path}.{key}", seen, out, depth + 1)


def transform_random_states(transform: Any) -> dict[str, np.random.RandomState]:
    """``{attribute path: RandomState}`` of every random transform reachable from ``transform``."""
    out: dict[str, np.random.RandomState] = {}
    _walk(transform, "transform", set(), out)
    return out


def capture_rng(loader: Any = None) -> dict[str, Any]:
    """The generator states of this process, and of ``loader`` (its ``generator`` and its dataset's transforms).

    Returns:
        ``{"python", "numpy", "torch", "cuda", "loader_generator", "transforms"}`` and, for an
        :class:`ItemSeedSampler`, ``"sampler_generator"``; tensors and plain values only.
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": _np_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    generator = getattr(loader, "generator", None)
    state["loader_generator"] = generator.get_state() if isinstance(generator, torch.Generator) else None
    sampler_generator = getattr(getattr(loader, "sampler", None), "item_seed_generator", None)
    if isinstance(sampler_generator, torch.Generator):
        state["sampler_generator"] = sampler_generator.get_state()
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    state["transforms"] = {k: _np_state(r.get_state()) for k, r in transform_random_states(transform).items()}
    return state


def restore_rng(state: Mapping[str, Any], loader: Any = None) -> list[str]:
    """Restore what :func:`capture_rng` saved; returns the parts that could not be restored (logged at INFO).

    Transforms present in only one of the checkpoint and the current pipeline (a changed config) keep their seeded
    state; the returned list names them.
    """
    missing: list[str] = []
    if "python" in state:
        py = state["python"]
        random.setstate(
            (int(py["version"]), tuple(int(x) for x in torch.as_tensor(py["internal"]).tolist()), py["gauss"])
        )
    if "numpy" in state:
        np.random.set_state(_np_tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in cuda])
        else:
            missing.append("cuda")
    generator = getattr(loader, "generator", None)
    saved_gen = state.get("loader_generator")
    if isinstance(generator, torch.Generator) and saved_gen is not None:
        generator.set_state(torch.as_tensor(saved_gen, dtype=torch.uint8))
    elif (generator is None) != (saved_gen is None):
        missing.append("loader_generator")
    sampler_generator = getattr(getattr(loader, "sampler", None), "item_seed_generator", None)
    saved_sampler = state.get("sampler_generator")
    if isinstance(sampler_generator, torch.Generator) and saved_sampler is not None:
        sampler_generator.set_state(torch.as_tensor(saved_sampler, dtype=torch.uint8))
    elif isinstance(sampler_generator, torch.Generator) or saved_sampler is not None:
        missing.append("sampler_generator")
    saved = dict(state.get("transforms") or {})
    current = transform_random_states(getattr(getattr(loader, "dataset", None), "transform", None))
    for key, rs in current.items():
        if key in saved:
            rs.set_state(_np_tuple(saved.pop(key)))
        else:
            missing.append(key)
    missing.extend(saved)
    if missing:
        logger.info(
            "random states not restored (config changed?): %s",
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    return missing


_SEED_RANGE = 2**31 - 1


class ItemSeedSampler(torch.utils.data.Sampler):
    """Shuffle like ``RandomSampler`` and give every index of the epoch a seed: yields ``(index, seed)`` pairs.

    Both come from a generator of the sampler's own (:attr:`item_seed_generator`, seeded with ``seed`` and saved in
    checkpoints by :func:`capture_rng`), so neither depends on how many draws the DataLoader itself made.
    Use it with :class:`ItemSeededDataset` (module docstring).

    Args:
        data_source: the dataset (its length is used).
        seed: the generator's seed (``training.seed``). Default 0.
        shuffle: shuffle the indices each epoch. Default True.

    Example:
        >>> sampler = ItemSeedSampler(range(4), seed=1)
        >>> sorted(i for i, _ in sampler)
        [0, 1, 2, 3]
    """

    def __init__(self, data_source: Any, seed: int = 0, shuffle: bool = True) -> None:
        self.data_source, self.shuffle = data_source, bool(shuffle)
        self.item_seed_generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self):  # noqa: D105
        n = len(self.data_source)
        order = torch.randperm(n, generator=self.item_seed_generator) if self.shuffle else torch.arange(n)
        seeds = torch.randint(_SEED_RANGE, (n,), generator=self.item_seed_generator)
        return iter(zip(order.tolist(), seeds.tolist()))


class ItemSeededDataset(torch.utils.data.Dataset):
    """A dataset whose item ``(index, seed)`` is ``dataset[index]`` with its random transforms seeded from ``seed``.

    Every ``RandomState`` under the dataset's ``transform`` (:func:`transform_random_states`, in a fixed order) is
    seeded with ``seed + k`` before the item is made, so the crops and augmentations of an item depend on its seed
    only, not on the process or the items before it. A plain index is passed through unchanged. Other attributes
    (``transform``, ``data``...) are the wrapped dataset's.

    Args:
        dataset: the map-style dataset (a MONAI ``CacheDataset``).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._states: list[np.random.RandomState] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "_states"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, tuple) and len(item) == 2:
            index, seed = item
            if self._states is None:  # found once per process: the transform objects do not change
                states = transform_random_states(getattr(self.dataset, "transform", None))
                self._states = [states[k] for k in sorted(states)]
            for k, state in enumerate(self._states):
                state.seed((int(seed) + k) % 2**32)
            return self.dataset[int(index)]
        return self.dataset[item]


def _exit_on_sigterm_from(parent: int) -> None:
    """Wait for SIGTERM (blocked in every thread); exit when the parent sent it, ignore it from anyone else."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)  # the loader's own shutdown: nothing of the worker needs saving


def worker_init_ignoring_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: stop signals belong to the main process (module docstring), then MONAI's
    worker seeding."""
    from monai.data.utils import worker_init_fn

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
        threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()
    if torch.utils.data.get_worker_info() is not None:  # MONAI seeds the worker's dataset transforms
        worker_init_fn(worker_id)


def _monai_loader() -> type:
    from monai.data import DataLoader

    return DataLoader


class ItemSeededLoader(_monai_loader()):  # type: ignore[misc]
    """MONAI's ``DataLoader`` with :class:`ItemSeededDataset` and :class:`ItemSeedSampler`: the training loader of a
    run that resumes bit for bit with loader workers (module docstring).

    Takes ``DataLoader``'s arguments; workers ignore stop signals unless a ``worker_init_fn`` is given (module
    docstring). ``shuffle`` goes to the sampler, seeded from ``torch.initial_seed()`` (the
    run's ``training.seed`` after ``set_determinism``); its state is saved in every checkpoint. A loader rebuilt with
    an explicit ``sampler`` (``training.progressive``) keeps that sampler.

    Example:
        ``train#dataloader: {_target_: pivot_monai.engines.rng.ItemSeededLoader, dataset: ..., shuffle: true, ...}``
    """

    def __init__(self, dataset: Any, num_workers: int = 0, shuffle: bool = False, **kwargs: Any) -> None:
        if not isinstance(dataset, ItemSeededDataset):
            dataset = ItemSeededDataset(dataset)
        if kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs["sampler"] = ItemSeedSampler(dataset, seed=torch.initial_seed(), shuffle=shuffle)
        elif shuffle:
            raise ValueError("ItemSeededLoader: give shuffle or a sampler, not both")
        kwargs.setdefault("worker_init_fn", worker_init_ignoring_stop_signals)
        super().__init__(dataset, num_workers=num_workers, **kwargs)
