"""HeapPrefault: memory faulted in on a helper thread is what the next allocations get, without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading

import pytest

from pivot_monai.host.allocator import MIN_BYTES, HeapPrefault, heap_free_bytes

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_SCRIPT = """
import resource, sys, torch
from pivot_monai.host.allocator import HeapPrefault, heap_keeps_freed, reuse_freed_memory
assert reuse_freed_memory() and heap_keeps_freed()
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 48 * 2**20  # a 48 MB activation, as a forward allocates it
if sys.argv[1] == "prefault":
    with HeapPrefault(keeps_freed=True) as pre:
        pre.start(n + 2**20)
        assert pre.active
    assert not pre.active
before = faults()
x = torch.empty(n // 4).fill_(1.0)
print(faults() - before)
"""


def _faults_of_a_fresh_allocation(mode: str) -> int:
    # a fresh process each: the heap setting is process-wide, and this process's heap is warm already
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc heap")
def test_a_prefaulted_block_serves_the_next_allocation_without_page_faults():
    plain, prefaulted = _faults_of_a_fresh_allocation("plain"), _faults_of_a_fresh_allocation("prefault")
    assert plain > 10_000  # 48 MB = 12288 pages, each faulted in as the tensor is first written
    assert prefaulted * 20 < plain  # the released block's pages are already there


def test_nothing_is_done_without_heap_reuse_or_below_the_minimum():
    with HeapPrefault(keeps_freed=False) as off:
        off.start(64 * 2**20)
        assert not off.active
    small = HeapPrefault(keeps_freed=True)
    small.start(MIN_BYTES - 1)
    assert not small.active and small.nbytes == 0


@pytest.mark.skipif(not GLIBC, reason="C library calls")
def test_start_happens_once_and_release_is_idempotent():
    pre = HeapPrefault(keeps_freed=True)
    pre.start(MIN_BYTES)
    pre.start(4 * MIN_BYTES)  # ignored: one block per prefault
    assert pre.active and pre.nbytes == MIN_BYTES
    pre.release()
    pre.release()
    assert not pre.active
    assert not [t for t in threading.enumerate() if t.name == "pivot-heap-prefault"]


@pytest.mark.skipif(not GLIBC, reason="glibc mallinfo2")
def test_heap_free_bytes_counts_a_freed_block():
    import ctypes

    from pivot_monai.host.allocator import c_library

    libc = c_library()
    before = heap_free_bytes()
    block = libc.malloc(64 * 1024)  # below the mmap threshold: from the heap
    libc.memset(block, 1, 64 * 1024)
    held = heap_free_bytes()
    libc.free(ctypes.c_void_p(block))
    assert before is not None and held is not None
    assert heap_free_bytes() >= held + 60 * 1024


@pytest.mark.skipif(not GLIBC, reason="C library calls")
def test_a_thread_that_cannot_start_leaves_the_prefault_inactive(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    pre = HeapPrefault(keeps_freed=True)
    pre.start(MIN_BYTES)  # no error: the forward faults its own pages in, as without the prefault
    assert not pre.active
    pre.release()
