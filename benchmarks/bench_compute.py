"""Compute efficiency: achieved GFLOP/s of the detector's forward pass vs a measured conv3d peak on this machine.

FLOPs are counted on the actual network with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matmuls; a multiply-add is 2 FLOPs), for one sliding-window batch (``inference.sw_batch_size`` windows of
``data.patch_size``) in eval mode under ``torch.inference_mode``. The reference "peak" is one large float32
``Conv3d`` (32 -> 32 channels, 3x3x3, on 64^3) timed the same way: the best a 3D convolution achieves here.
Also for the network of each profile: ``channels_last_3d`` vs the default memory format (alternating), and the
forward time at 1, 2, ... threads (``torch.set_num_threads``, alternating), as speed-up over 1 thread. In full
mode, the demo network's forward in fresh processes with ``OMP_WAIT_POLICY=PASSIVE`` (what the Makefile exports)
vs unset (libgomp spins idle threads), alternating.

Profiles: ``demo`` (``demo.yaml``: 8 filters, depth 3, 48^3 windows, what the CPU demo trains) and ``default``
(``train.yaml``: 16 filters, depth 4, 64^3 windows).

Usage::

    python -m benchmarks.bench_compute            # both profiles, 7 timed runs per case
    python -m benchmarks.bench_compute --quick    # demo profile at 32^3, conv peak at 32^3, 3 runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    DEMO_CONFIG,
    NETWORK_PROFILES,
    Row,
    alternate,
    format_table,
    load_profile,
    median,
    setup_logging,
    write_results,
)
from pivot_monai.networks import build_network, count_parameters

__all__ = ["count_flops", "forward_seconds", "main"]

logger = logging.getLogger(__name__)

NAME = "compute"


def count_flops(module: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """FLOPs of one call ``module(x)`` (FlopCounterMode; a multiply-add counts 2)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def forward_seconds(module: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int = 2) -> float:
    """Seconds of one ``module(x)`` call after ``warmup`` calls (oneDNN picks and caches kernels on the first)."""
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        start = time.perf_counter()
        module(x)
        return time.perf_counter() - start


def _timed(module: Callable, x: torch.Tensor, threads: int | None = None) -> float:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return forward_seconds(module, x, warmup=1)
    finally:
        torch.set_num_threads(previous)


def conv_peak(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of one float32 Conv3d(32, 32, 3, padding=1) on (1, 32, size, size, size), median of ``repeats``."""
    conv = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 32, size, size, size)
    flops = count_flops(conv, x)
    forward_seconds(conv, x)
    seconds = median([forward_seconds(conv, x, warmup=0) for _ in range(repeats)])
    return {"flops": flops, "seconds": seconds, "gflops_per_s": flops / seconds / 1e9}


def profile_network(name: str, sections: dict[str, dict[str, Any]], repeats: int, threads: Sequence[int]) -> dict:
    """FLOPs, GFLOP/s, memory-format and thread effects of one profile's network."""
    net = build_network(sections["model"]).eval()
    batch = int(sections["inference"].get("sw_batch_size", 1))
    patch = [int(v) for v in sections["data"]["patch_size"]]
    x = torch.rand(batch, 1, *patch)
    flops = count_flops(net, x)
    net_cl = build_network(sections["model"]).eval().to(memory_format=torch.channels_last_3d)
    net_cl.load_state_dict(net.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    formats = alternate(
        {"default": partial(_timed, net, x), "channels_last_3d": partial(_timed, net_cl, x_cl)}, repeats
    )
    by_threads = alternate({str(t): partial(_timed, net, x, t) for t in threads}, repeats)
    seconds = median(formats["default"])
    result = {
        "model": sections["model"],
        "input": [batch, 1, *patch],
        "parameters": count_parameters(net),
        "flops": flops,
        "seconds": seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "mvoxel_per_s": batch * patch[0] * patch[1] * patch[2] / seconds / 1e6,
        "format_seconds": formats,
        "channels_last_speedup": seconds / median(formats["channels_last_3d"]),
        "thread_seconds": by_threads,
        "thread_speedup": {t: median(by_threads[str(threads[0])]) / median(v) for t, v in by_threads.items()},
    }
    logger.info(
        "%s network %s: %.2f GFLOP per forward, %.3f s, %.1f GFLOP/s, channels_last_3d x%.2f, threads %s",
        name,
        result["input"],
        flops / 1e9,
        seconds,
        result["gflops_per_s"],
        result["channels_last_speedup"],
        {t: round(v, 2) for t, v in result["thread_speedup"].items()},
    )
    return result


_WAIT_SNIPPET = """
import json, sys, time, torch
from pivot_monai.networks import build_network
cfg, batch, patch, repeats = json.loads(sys.argv[1])
net, x, times = build_network(cfg).eval(), torch.rand(batch, 1, *patch), []
with torch.inference_mode():
    net(x)
    for _ in range(repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
print(json.dumps(sorted(times)[len(times) // 2]))
"""


def wait_policy_seconds(policy: str | None, sections: dict[str, dict[str, Any]], repeats: int) -> float:
    """Median forward seconds of the profile's network in a fresh process with ``OMP_WAIT_POLICY=policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    batch = int(sections["inference"].get("sw_batch_size", 1))
    arg = json.dumps([sections["model"], batch, sections["data"]["patch_size"], repeats])
    proc = subprocess.run(
        [sys.executable, "-c", _WAIT_SNIPPET, arg], env=env, capture_output=True, text=True, check=True, timeout=600
    )
    return float(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="demo profile at 32^3, conv peak at 32^3, 3 runs")
    p.add_argument("--profiles", nargs="+", choices=sorted(NETWORK_PROFILES), default=["demo", "default"])
    p.add_argument("--repeats", type=int, default=7, help="timed runs per case (median)")
    p.add_argument("--conv-size", type=int, default=64, help="edge of the conv3d peak input")
    p.add_argument("--wait-policy-rounds", type=int, default=3, help="fresh-process rounds (full mode; 0 skips)")
    p.add_argument("--max-threads", type=int, default=None, help="largest thread count tried (default: cores)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/compute.json`` and return the table rows."""
    args = parse_args(argv)
    profiles, repeats, conv_size = list(args.profiles), args.repeats, args.conv_size
    overrides: dict[str, Any] = {}
    if args.quick:
        profiles, repeats, conv_size = ["demo"], 3, 32
        overrides = {"data#patch_size": [32, 32, 32]}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    top = max(1, args.max_threads or cores)
    threads = sorted({1, top} | {t for t in (2, 4, 8, 16) if t < top})
    peak = conv_peak(conv_size, repeats)
    logger.info("conv3d 32->32 3x3x3 on %d^3: %.1f GFLOP/s", conv_size, peak["gflops_per_s"])
    nets = {p: profile_network(p, load_profile(NETWORK_PROFILES[p], overrides), repeats, threads) for p in profiles}
    rows = [Row(NAME, f"conv3d peak GFLOP/s (32->32, 3^3, {conv_size}^3, fp32)", peak["gflops_per_s"])]
    for p, r in nets.items():
        shape = "x".join(str(v) for v in r["input"][2:])
        rows += [
            Row(NAME, f"{p} net GFLOP/s (batch {r['input'][0]} x {shape}) vs conv3d peak", r["gflops_per_s"],
                peak["gflops_per_s"]),
            Row(NAME, f"{p} net s/forward channels_last_3d vs default", median(r["format_seconds"]["channels_last_3d"]),
                r["seconds"]),
        ]  # fmt: skip
        rows += [
            Row(NAME, f"{p} net s/forward at {t} thread(s) vs 1 thread", median(v), median(r["thread_seconds"]["1"]))
            for t, v in r["thread_seconds"].items()
            if t != "1"
        ]
    details: dict[str, Any] = {"conv_peak": peak, "networks": nets}
    if not args.quick and args.wait_policy_rounds > 0:
        demo = load_profile(DEMO_CONFIG)
        cases = {p: partial(wait_policy_seconds, p or None, demo, repeats) for p in ("PASSIVE", "")}
        waits = alternate(cases, args.wait_policy_rounds)
        details["wait_policy_seconds"] = waits
        rows.append(
            Row(NAME, "demo net s/forward, fresh process: OMP_WAIT_POLICY=PASSIVE vs unset", median(waits["PASSIVE"]),
                median(waits[""]))
        )  # fmt: skip
    settings = {"quick": args.quick, "repeats": repeats, "conv_size": conv_size, "threads": threads}
    settings["profiles"] = {p: str(NETWORK_PROFILES[p].name) for p in profiles}
    write_results(NAME, rows, details, settings)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
