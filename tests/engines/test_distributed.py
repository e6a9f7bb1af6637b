"""DDP through torchrun on CPU (gloo): gradient averaging, the bundle under 2 processes, and a 2-node launch."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from pivot_monai.engines.distributed import shard, wrap_network
from tests.conftest import REPO_ROOT, TINY_OVERRIDES

CONFIGS = REPO_ROOT / "bundle" / "configs"
HAS_CUDA = torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    worker = str(REPO_ROOT / "tests" / "engines" / "ddp_equivalence_worker.py")
    single = _run([sys.executable, worker, str(tmp_path / "single.pt")])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(_torchrun("--nproc_per_node=2", f"--master_port={_free_port()}", worker, str(tmp_path / "ddp.pt")))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    init = _initial_weights()
    moved = 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)  # float summation order differs
        moved += int(not torch.equal(a[key], init[key]))
    assert moved > 0  # training changed the weights, so equality is not trivial


def _initial_weights():
    from pivot_monai.networks import build_network

    torch.manual_seed(0)
    return build_network({"base_filters": 4, "depth": 2, "batch_norm": False}).state_dict()


def _bundle_cmd(bundle_root, dataset) -> list[str]:
    return [
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']",
        "--bundle_root",
        str(bundle_root),
        "--dataset_dir",
        str(dataset),
        "--training#epochs",
        "1",
        *TINY_OVERRIDES,
    ]


def _outputs(bundle_root):
    return sorted(p.relative_to(bundle_root).as_posix() for p in bundle_root.rglob("*") if p.is_file())


def test_bundle_under_two_processes_writes_one_set_of_outputs(tiny_processed, tmp_path):
    root = tmp_path / "bundle"
    res = _run(_torchrun("--nproc_per_node=2", f"--master_port={_free_port()}", *_bundle_cmd(root, tiny_processed)))
    assert res.returncode == 0, res.stderr[-4000:]
    files = _outputs(root)
    assert [f for f in files if f.startswith("models/")] == ["models/model.pt", "models/model_best.pt"]
    assert len([f for f in files if "tfevents" in f]) == 1
    log = res.stdout + res.stderr
    assert "rank 0/2" in log and log.count("Epoch[1] Metrics") == 1  # validation gathered, reported once


def test_two_node_launch_on_localhost(tiny_processed, tmp_path):
    root, port = tmp_path / "bundle", _free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = _torchrun(
            "--nnodes=2",
            f"--node_rank={node_rank}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            *_bundle_cmd(root, tiny_processed),
        )
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                encoding="utf-8",
                errors="replace",
                env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert [f for f in _outputs(root) if f.startswith("models/")] == ["models/model.pt", "models/model_best.pt"]


def test_shard_is_identity_outside_ddp_and_dp_needs_cuda():
    assert shard([1, 2, 3]) == [1, 2, 3]
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="needs CUDA"):
            wrap_network(torch.nn.Linear(1, 1), "dp", torch.device("cpu"))
    with pytest.raises(ValueError, match="device.parallel_mode"):
        wrap_network(torch.nn.Linear(1, 1), "horovod", torch.device("cpu"))


def test_ddp_without_torchrun_is_a_clear_error(monkeypatch):
    from pivot_monai.engines.distributed import setup

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        setup("ddp", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_data_parallel_on_gpu():
    net = wrap_network(torch.nn.Conv3d(1, 1, 3), "dp", torch.device("cuda", 0), [0])
    assert isinstance(net, torch.nn.DataParallel)
