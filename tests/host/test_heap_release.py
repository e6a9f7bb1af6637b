"""Tests for the heap's low-memory valve (pivot_monai.host.allocator.release_freed_memory) and host memory info."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from pivot_monai.host import allocator, meminfo
from tests.conftest import REPO_ROOT

GLIBC = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt and malloc_trim"
)

# a fresh process: reuse_freed_memory is process-wide. A forward-sized gigabyte is allocated and freed inside the
# forward context, as a whole-volume forward does; the heap keeps it unless the host is "low" (argv[1] is the
# share of total memory below which the valve opens: 0 never, 1 always)
_SCRIPT = r"""
import json, sys, torch
from pivot_monai.host import allocator, forward_context
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
allocator.reuse_freed_memory()
allocator.LOW_MEMORY_FRACTION = float(sys.argv[1])
before = rss()
with forward_context(torch.device("cpu")):
    blocks = [torch.ones(64 * 2**20) for _ in range(4)]  # 1 GiB of activations
    del blocks
print(json.dumps({"kept": rss() - before}))
"""


def _kept_after_forward(low_fraction: float) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(low_fraction)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["kept"]


@GLIBC
def test_a_forward_keeps_its_freed_memory_while_the_host_has_plenty():
    assert _kept_after_forward(0.0) > 2**30 * 0.9  # the lever: the freed gigabyte stays in the heap for reuse


@GLIBC
def test_a_forward_hands_its_freed_memory_back_when_the_host_runs_low():
    assert _kept_after_forward(1.0) < 2**30 * 0.1  # the valve: malloc_trim returned it to the kernel


def test_release_is_a_no_op_unless_the_heap_keeps_freed_memory(monkeypatch):
    monkeypatch.setitem(allocator._HEAP, "keeps_freed", False)
    assert allocator.release_freed_memory(low_fraction=1.0) == 0


def test_cgroup_limit_reads_v2_and_v1_and_none_without_a_limit(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    assert meminfo.cgroup_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    assert meminfo.cgroup_limit(tmp_path) == 3 * 2**30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    assert meminfo.cgroup_limit(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**30))
    assert meminfo.cgroup_limit(v1) == 2**30


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/meminfo")
def test_ram_available_is_within_ram_total():
    assert 0 < meminfo.ram_available() <= meminfo.ram_total()
