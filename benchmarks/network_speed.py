"""Forward speed of :class:`~pivot_monai.networks.PivotDetector` on CPU, in input Mvoxel/s.

Eval mode under ``torch.inference_mode``; best (minimum) of ``--repeats`` timed runs after two warm-up runs: on a
shared machine the minimum is the least disturbed by other processes.

Usage::

    python benchmarks/network_speed.py --threads 2 --sizes 64 96 --base-filters 8 16 32 --depths 3 4 --strides 1 2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time

import torch

from pivot_monai.networks import PivotDetector, count_parameters

__all__ = ["measure", "main"]

logger = logging.getLogger(__name__)


def measure(net: torch.nn.Module, size: int, repeats: int = 5, channels_last: bool = False) -> float:
    """Best (minimum) seconds of one forward pass of ``net`` on a (1, 1, size, size, size) input.

    Args:
        net: model in eval mode.
        size: edge length of the cubic input.
        repeats: timed runs after two warm-up runs. Defaults to 5.
        channels_last: convert model and input to ``torch.channels_last_3d``. Defaults to False.

    Returns:
        minimum wall time in seconds.
    """
    x = torch.randn(1, 1, size, size, size)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    times = []
    with torch.inference_mode():
        for _ in range(2):  # oneDNN picks and caches kernels on the first calls
            net(x)
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    """Print a markdown table of forward speeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--base-filters", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last_3d for the default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    logger.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
    logger.info("| input | base_filters | depth | output_stride | params | ms / forward | Mvoxel/s |")
    logger.info("|---|---|---|---|---|---|---|")
    for size, filters, depth, stride in itertools.product(args.sizes, args.base_filters, args.depths, args.strides):
        net = PivotDetector(base_filters=filters, depth=depth, output_stride=stride).eval()
        seconds = measure(net, size, args.repeats)
        logger.info(
            "| %d^3 | %d | %d | %d | %d | %.0f | %.2f |",
            size, filters, depth, stride, count_parameters(net), 1e3 * seconds, size**3 / seconds / 1e6,
        )  # fmt: skip
    if args.channels_last:
        for size in args.sizes:
            net = PivotDetector().eval()
            for channels_last in (False, True):
                seconds = measure(net, size, args.repeats, channels_last=channels_last)
                logger.info(
                    "default %d^3 channels_last_3d=%s: %.0f ms, %.2f Mvoxel/s",
                    size, channels_last, 1e3 * seconds, size**3 / seconds / 1e6,
                )  # fmt: skip


if __name__ == "__main__":
    main()
