"""Distributed and data-parallel training on PyTorch's own engine (torch.distributed / torchrun).

* ``setup(parallel_mode)`` initialises the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, gloo on CPU. Multi-node works unchanged because the
  device index comes from ``LOCAL_RANK`` (see :func:`pivot_monai.engines.runtime.select_device`).
* ``shard(items)`` gives each rank its own part of a datalist, so a rank's CacheDataset caches only its shard and
  RAM per rank does not grow with the world size (a DistributedSampler over a full cache would hold every scan in
  every rank).
* ``wrap_network`` applies DistributedDataParallel (``ddp``) or DataParallel (``dp``, GPU only, ``device.gpu_ids``).
* ``is_main_process()`` gates checkpoint writing and logging to rank 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import partition_dataset

__all__ = ["PARALLEL_MODES", "cleanup", "is_main_process", "rank", "setup", "shard", "world_size", "wrap_network"]

logger = logging.getLogger(__name__)

PARALLEL_MODES = ("none", "dp", "ddp")


def _check_mode(mode: str) -> str:
    mode = str(mode or "none").lower()
    if mode not in PARALLEL_MODES:
        raise ValueError(f"device.parallel_mode must be one of {list(PARALLEL_MODES)}, got {mode!r}")
    return mode


def setup(parallel_mode: str = "none", device_type: str = "cuda") -> bool:
    """Initialise the process group for ``ddp`` (idempotent); returns whether this is a distributed run.

    Raises:
        ValueError: unknown mode, or ``ddp`` without torchrun's environment.
    """
    mode = _check_mode(parallel_mode)
    if mode != "ddp":
        return False
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "device.parallel_mode: ddp needs torchrun's environment (RANK, WORLD_SIZE, ...); launch with "
            "`torchrun --nproc_per_node=N -m monai.bundle run training --config_file ...` or set "
            "device.parallel_mode: none"
        )
    backend = "nccl" if (str(device_type) == "cuda" and torch.cuda.is_available()) else "gloo"
    dist.init_process_group(backend=backend)
    # ignite's idist sets up its own view of the group lazily with a collective (`new_group`) on its first use, e.g.
    # inside CheckpointSaver -> DiskSaver, which only rank 0 builds: do it here, on every rank, or rank 0 deadlocks.
    import ignite.distributed as idist

    idist.sync()
    if dist.get_rank() != 0:  # rank 0 alone logs; the others report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("ignite", "monai", "pivot_monai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logger.info(
        "DDP: rank %d/%d (local rank %s), backend %s",
        dist.get_rank(),
        dist.get_world_size(),
        os.environ.get("LOCAL_RANK", "?"),
        backend,
    )
    return True


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a non-distributed run)."""
    return rank() == 0


def shard(items: Sequence[Any], shuffle: bool = True, even: bool = True, seed: int = 0) -> list[Any]:
    """This rank's part of ``items`` (all of them outside DDP).

    Args:
        items: datalist entries.
        shuffle: shuffle before partitioning (same seed on every rank, so the shards are disjoint). Default True.
        even: pad so every rank gets the same count (training needs equal step counts per rank; validation
            uses ``even=False`` and gathers uneven results). Default True.
    """
    n = world_size()
    if n == 1:
        return list(items)
    parts = partition_dataset(data=list(items), num_partitions=n, shuffle=shuffle, seed=seed, even_divisible=even)
    return parts[rank()]


def wrap_network(
    network: torch.nn.Module, parallel_mode: str, device: torch.device, gpu_ids: Sequence[int] | None = None
) -> torch.nn.Module:
    """Wrap for ``dp``/``ddp`` (``none`` returns the network unchanged).

    Raises:
        ValueError: ``dp`` without CUDA.
    """
    mode = _check_mode(parallel_mode)
    if mode == "ddp":
        if not dist.is_initialized():
            setup("ddp", device.type)
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: a head whose loss weight is 0, or an encoder frozen for transfer learning, gets no
        # gradient; without it DDP would fail at the first step. The extra graph traversal is cheap next to 3D convs.
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids, find_unused_parameters=True)
    if mode == "dp":
        if device.type != "cuda":
            raise ValueError("device.parallel_mode: dp (DataParallel) needs CUDA GPUs; use ddp (gloo) on CPU")
        return torch.nn.DataParallel(network, device_ids=list(gpu_ids) if gpu_ids else None)
    return network


def cleanup() -> None:
    """Destroy the process group at the end of a distributed run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
