"""Hard-negative mining between epochs (``training.hard_negative_mining``).

Every ``interval`` epochs :class:`HardNegativeMiningHandler` runs the current model (eval mode, no gradients, the
sliding-window inferer) over the whole training volumes, or a rotating ``subset_fraction`` of them, decodes peaks
(:func:`~pivot_monai.inference.decode.decode_peaks`) and keeps the false positives: peaks scoring at least
``score_threshold`` that lie outside the radius of every nodule and excluded finding. They replace the scan's entries
of the :class:`~pivot_monai.transforms.hard_negatives.HardNegativePool`, from which
:class:`~pivot_monai.transforms.sampling.NoduleCropSamplerd` centres the hard negative crops; the pool is then
published to its file so data-loader workers see it.

Under DDP each rank mines its own shard of the round's volumes; the new entries are all-gathered
(``ignite.distributed.all_gather``, a no-op in one process) and merged in a fixed order, so every rank ends with the
same pool. The maths lives in :mod:`pivot_monai.transforms.hard_negatives`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events

from pivot_monai.inference.decode import DecodeSettings, candidates_to_world, decode_peaks, output_to_input_index
from pivot_monai.transforms.hard_negatives import Entry, HardNegativePool, merge_mined, select_false_positives

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["HardNegativeMiningHandler"]


class HardNegativeMiningHandler:
    """Mine false-positive peaks of the current model into the hard-negative pool every ``interval`` epochs.

    Args:
        pool: the pool shared with the crop sampler.
        network: the detector (a DataParallel/DDP wrapper is unwrapped: ranks mine different volumes).
        dataset: whole training volumes: items with ``"image"`` (1, X, Y, Z), ``"nodules"`` (M, 7) table,
            ``"index_to_world"`` (4, 4) and ``"seriesuid"`` (e.g. the train datalist through the validation
            transforms). Indexable, with ``len``.
        inferer: whole-volume inferer called as ``inferer(image, network)`` (the validation ``SlidingWindowInferer``).
        interval: epochs between mining rounds. Default 5.
        pool_size: most false positives taken per scan and round; default the pool's bound.
        score_threshold: smallest score of a mined false positive. Default 0.5.
        subset_fraction: share of the volumes mined per round, rotating through the dataset. Default 1.0 (all).
        spacing: voxel size of the processed volumes in mm (``data.target_spacing``). Default (1.5, 1.5, 1.5).
        output_stride: resolution divisor of the network's maps (``model.output_stride``). Default 1.
        decode: peak-decoding settings (``inference`` section); the threshold is set to ``score_threshold``.
        margin_mm: distance beyond a finding's radius that still counts as a hit. Default 0.
        device: device to mine on; default the network's.
        amp: run the network under autocast. Default False.
        summary_writer: TensorBoard writer for ``train/mining_pool_size`` and ``train/mining_false_positives`` (or
            ``None``).
        name: logger name.

    Raises:
        ValueError: invalid interval, threshold or fraction, naming the ``training.hard_negative_mining`` key.
        TypeError: ``pool`` is not a :class:`~pivot_monai.transforms.hard_negatives.HardNegativePool`.
    """

    def __init__(
        self,
        pool: HardNegativePool,
        network: nn.Module,
        dataset: Sequence[Mapping[str, Any]],
        inferer: Any,
        interval: int = 5,
        pool_size: int | None = None,
        score_threshold: float = 0.5,
        subset_fraction: float = 1.0,
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        output_stride: int = 1,
        decode: DecodeSettings | None = None,
        margin_mm: float = 0.0,
        device: torch.device | str | None = None,
        amp: bool = False,
        summary_writer: Any = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(pool, HardNegativePool):
            raise TypeError(f"pool must be a HardNegativePool, got {type(pool).__name__}")
        if isinstance(interval, bool) or int(interval) < 1:
            raise ValueError(f"training.hard_negative_mining.interval must be an integer >= 1 (epochs), got {interval}")
        if not 0.0 <= float(score_threshold) < 1.0:
            raise ValueError(f"training.hard_negative_mining.score_threshold must be in [0, 1), got {score_threshold}")
        if not 0.0 < float(subset_fraction) <= 1.0:
            raise ValueError(f"training.hard_negative_mining.subset_fraction must be in (0, 1], got {subset_fraction}")
        if pool_size is not None and (isinstance(pool_size, bool) or int(pool_size) < 1):
            raise ValueError(f"training.hard_negative_mining.pool_size must be >= 1, got {pool_size!r}")
        self.pool, self.network, self.dataset, self.inferer = pool, network, dataset, inferer
        self.pool_size = int(pool_size) if pool_size is not None else pool.pool_size
        self.interval, self.score_threshold = int(interval), float(score_threshold)
        self.subset_fraction, self.margin_mm = float(subset_fraction), float(margin_mm)
        self.spacing, self.stride = np.asarray(spacing, dtype=float), int(output_stride)
        base = decode or DecodeSettings()
        self.decode = replace(base, score_threshold=min(base.score_threshold, self.score_threshold))
        self.device, self.amp, self.writer = device, bool(amp), summary_writer
        self.logger = logging.getLogger(name or __name__)
        self.total_seconds = 0.0  # wall time spent mining (all rounds of this run), the overhead of mining

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.check_workers)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def check_workers(self, engine: Engine) -> None:
        """Refuse data-loader workers that could not see the pool (a pool without a file)."""
        workers = int(getattr(engine.state.dataloader, "num_workers", 0) or 0)
        if workers > 0 and self.pool.path is None:
            raise ValueError(
                f"training.hard_negative_mining with data.num_workers={workers} needs a pool file: "
                f"workers are separate processes; build HardNegativePool(path=...) or set "
                f"data.num_workers: 0"
            )

    def round_indices(self, round_index: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Dataset indices mined by ``rank`` in 0-based round ``round_index`` (rotating subset, then a rank shard)."""
        n = len(self.dataset)
        k = min(n, max(1, math.ceil(self.subset_fraction * n)))
        start = (round_index * k) % n if n else 0
        chosen = [(start + j) % n for j in range(k)] if n else []
        return chosen[rank::world_size]

    def mine_item(self, net: nn.Module, item: Mapping[str, Any]) -> list[Entry]:
        """False positives of one volume, hardest first (at most ``pool_size``)."""
        image = torch.as_tensor(item["image"]).float()
        device = self.device or next(net.parameters()).device
        autocast = torch.autocast(torch.device(device).type) if self.amp else nullcontext()
        with autocast:
            out = self.inferer(image[None].to(device), net)
        heat = out["heatmap"] if isinstance(out, Mapping) else out
        diam = out.get("diameter") if isinstance(out, Mapping) else None
        decoded = decode_peaks(
            heat[0].detach().float().cpu(),
            None if diam is None else diam[0].detach().float().cpu(),
            None,
            self.decode,
            tuple(self.spacing * self.stride),
        )
        index = output_to_input_index(decoded["index"], self.stride)
        world = candidates_to_world(index, torch.as_tensor(item["index_to_world"]).cpu().numpy())
        return select_false_positives(
            index,
            decoded["score"],
            world,
            torch.as_tensor(item["nodules"]).cpu().numpy(),
            image.shape[1:],
            self.score_threshold,
            self.pool_size,
            self.margin_mm,
        )

    def __call__(self, engine: Engine) -> None:
        if engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs:
            return  # no epoch left to train on this round's hard negatives
        net = (
            self.network.module
            if isinstance(self.network, (nn.DataParallel, nn.parallel.DistributedDataParallel))
            else self.network
        )
        start = time.perf_counter()
        round_index = max(engine.state.epoch // self.interval - 1, 0)  # from the epoch: resumes keep rotating
        indices = self.round_indices(round_index, idist.get_rank(), idist.get_world_size())
        was_training = net.training
        net.eval()
        local: list[tuple[str, list[Entry]]] = []
        try:
            with torch.no_grad():
                for i in indices:
                    item = self.dataset[i]
                    local.append((str(item["seriesuid"]), self.mine_item(net, item)))
        finally:
            net.train(was_training)
        gathered = idist.all_gather(local)  # one list per rank; [local] in a single process
        merged = merge_mined(gathered)
        for uid, entries in merged:
            self.pool.update(uid, entries)
        self.pool.publish()
        mined = sum(len(e) for _, e in merged)
        epoch = engine.state.epoch
        seconds = time.perf_counter() - start
        self.total_seconds += seconds
        if idist.get_rank() == 0:  # every rank holds the same pool
            self.logger.info(
                "epoch %d: hard-negative mining round %d: %d false positive(s) >= %.2f in %d scan(s) in %.1f s; "
                "pool holds %d over %d scan(s)",
                epoch,
                round_index + 1,
                mined,
                self.score_threshold,
                len(merged),
                seconds,
                len(self.pool),
                len(self.pool.seriesuids()),
            )
        engine.state.mining = {
            "false_positives": mined,
            "pool_size": len(self.pool),
            "scans": len(merged),
            "seconds": seconds,
        }
        if self.writer is not None:
            self.writer.add_scalar("train/mining_pool_size", len(self.pool), epoch)
            self.writer.add_scalar("train/mining_false_positives", mined, epoch)
