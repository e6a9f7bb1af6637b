"""Tests for pivot_monai.data.io.value_range: min and max for every pixel type, also in forked workers."""

from __future__ import annotations

import numpy as np
import pytest

from pivot_monai.data.io import value_range


def test_value_range_is_min_and_max_for_every_type(rng):
    for dtype in (np.int16, np.uint16, np.uint8, np.float32, np.float64):
        values = rng.integers(0, 200, size=(7, 9, 11)).astype(dtype)
        values.flags.writeable = False  # as SimpleITK's array views and memory maps are
        assert value_range(values) == (float(values.min()), float(values.max()))
    with_nan = np.zeros((4, 4, 4), np.float32)
    with_nan[1, 2, 3] = np.nan
    assert all(np.isnan(value_range(with_nan)))


def _range_in_forked_child(values: np.ndarray, queue) -> None:
    queue.put(value_range(values))


def test_value_range_works_in_a_child_forked_after_torch_ran_in_parallel():
    # pivot preprocess forks its workers; a child cannot use the OpenMP threads its parent started (torch crashed)
    import multiprocessing

    import torch

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    torch.set_num_threads(2)
    big = np.arange(4_000_000, dtype=np.int16)
    assert value_range(big) == (-32768.0, 32767.0)  # in this process: torch, with its OpenMP threads started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_range_in_forked_child, args=(big, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0, f"forked child died with exit code {child.exitcode}"
    assert queue.get(timeout=5) == (-32768.0, 32767.0)
