"""Graceful stop under DDP: two gloo processes, one signalled; both stop after the same iteration."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.conftest import REPO_ROOT

_WORKER = r"""
import json, os, signal, sys
import torch.distributed as dist
from ignite.engine import Engine
from pivot_monai.handlers.graceful_stop import GracefulStop

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
saved = []

class Saver:
    def save(self, engine):
        saved.append(engine.state.iteration)
        return "ckpt.pt" if rank == 0 else None

stop = GracefulStop(Saver())
def step(engine, batch):
    if rank == 1 and engine.state.iteration == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 is signalled

engine = Engine(step)
stop.attach(engine)
engine.run(range(10), max_epochs=5)
json.dump({"iteration": engine.state.iteration, "saved": saved, "exit": stop.exit_status}, open(out, "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo file store on Linux")
def test_every_rank_stops_after_the_iteration_one_rank_was_signalled_in(tmp_path):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(rank), str(tmp_path / "store"), str(tmp_path / f"r{rank}.json")],
            cwd=REPO_ROOT,
            env=env,
        )
        for rank in (0, 1)
    ]
    codes = [p.wait(120) for p in procs]
    assert codes == [0, 0]
    results = [json.loads((tmp_path / f"r{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["iteration"] for r in results] == [3, 3]
    assert [r["exit"] for r in results] == [128 + signal.SIGTERM] * 2  # rank 0 learnt the signal from rank 1
    assert [r["saved"] for r in results] == [[3], [3]]  # every rank calls save; the checkpointer writes on rank 0
