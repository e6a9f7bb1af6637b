"""Run by tests/engines/test_distributed.py under torchrun (or plainly for the 1-process reference).

Trains a small PivotDetector (instance norm, so batch statistics do not depend on the split) for a few SGD steps
through MONAI's SupervisedTrainer with the network wrapped exactly as the bundle wraps it, on a fixed dataset. Under
DDP each rank gets its half of every global batch; the reference run sees the whole global batch. Writes the final
weights to argv[1] (rank 0 only).
"""

from __future__ import annotations

import sys

import torch
from monai.engines import SupervisedTrainer

from pivot_monai.engines.distributed import cleanup, rank, setup, world_size, wrap_network
from pivot_monai.networks import build_network

GLOBAL_BATCH, STEPS = 4, 3


def main(out: str) -> None:
    distributed = setup("ddp" if "RANK" in __import__("os").environ else "none", "cpu")
    torch.manual_seed(0)
    net = build_network({"base_filters": 4, "depth": 2, "batch_norm": False})
    net = wrap_network(net, "ddp" if distributed else "none", torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(STEPS * GLOBAL_BATCH, 1, 16, 16, 16, generator=gen)
    targets = torch.rand(STEPS * GLOBAL_BATCH, 1, 16, 16, 16, generator=gen)
    per_rank = GLOBAL_BATCH // world_size()
    batches = []
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + rank() * per_rank
        batches.append({"image": images[start : start + per_rank], "label": targets[start : start + per_rank]})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        loss_function=lambda pred, y: sum(torch.nn.functional.mse_loss(pred[k], y) for k in sorted(pred)),
    )
    trainer.run()
    if rank() == 0:
        module = net.module if hasattr(net, "module") else net
        torch.save(module.state_dict(), out)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
