"""Fault in the memory of the next forward on an idle core, while this one reads and preprocesses the scan.

A fresh ``pivot infer`` process meets every page of its network's activations for the first time in the forward:
the kernel traps and zero-fills each 4 KB page as a convolution first writes it. For the demo network on a 2 mm lung
box that is 30k pages (two 8-channel maps of the whole box, 120 MB), and on the 2-core VMs of ``benchmarks/`` it made
the first forward 0.17-0.41 s instead of the 0.13-0.15 s of a forward in memory already met (measured in fresh
processes on 2026-12-02). Once the lung crop is decided, the rest of the preprocessing (blur, resampling, HU window:
30-45 ms) keeps one core busy, so :class:`HeapPrefault` has the other fault those pages in meanwhile: it takes one
block of the forward's size from the heap, has a helper thread populate it (``madvise(MADV_POPULATE_WRITE)``, Linux
5.14+: 27 ms for 128 MB here, 37 ms in 4 MB chunks beside the preprocessing; else ``memset``), and when the network
is about to run frees the block back into the heap, where the forward's allocations find it. Network stage of
``benchmarks/bench_inference.py`` 0.19-0.21 -> 0.16-0.17 s, preprocessing +0.01 s, the scan -0.01 to -0.02 s.
(Started before the read it slowed the read, which keeps both cores busy, 0.07 -> 0.17-0.27 s: ITK's shrink and the
HU check are multi-threaded.)

That needs the heap to keep what is freed (:func:`~pivot_monai.engines.runtime.reuse_freed_memory`, glibc): without
it a block this large is unmapped on free and the work is lost, so :class:`HeapPrefault` does nothing. Allocators
such as jemalloc or tcmalloc keep their own caches but offer no such hand-over; no library does this, hence the
hand-written helper (``ctypes`` calls into the C library, which release the GIL while the kernel works).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import threading

__all__ = ["HeapPrefault", "c_library", "heap_free_bytes"]

logger = logging.getLogger(__name__)

MIN_BYTES = 8 << 20
"""Smaller requests are left to the forward: a thread costs more than faulting them in."""

CHUNK_BYTES = 4 << 20
"""Bytes populated per call (about 1 ms here)."""

_PAGE = mmap.PAGESIZE
_MADV_POPULATE_WRITE = 23  # <linux/mman.h>, Linux 5.14+


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


@functools.cache
def c_library() -> ctypes.CDLL | None:
    """The process's C library with the signatures of the heap calls PIVOT makes, or ``None`` where it cannot be loaded.

    One handle per process, shared by :class:`HeapPrefault`, :func:`heap_free_bytes` and
    :func:`~pivot_monai.engines.runtime.reuse_freed_memory` (``mallopt``; ``mallinfo2`` only exists from glibc 2.33).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
        libc.memset.restype, libc.memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        libc.madvise.restype, libc.madvise.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError) as err:
        logger.debug("no C library for the heap calls (%s)", err)
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype, libc.mallinfo2.argtypes = _MallInfo2, []
    return libc


def heap_free_bytes() -> int | None:
    """Free bytes in the main heap (glibc ``mallinfo2().fordblks``), or ``None`` where it cannot be asked."""
    libc = c_library()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


class HeapPrefault:
    """Fault in heap memory on a helper thread, then hand it to the heap (:meth:`release`) for what comes next.

    :meth:`start` takes a block of ``nbytes`` from the heap in the calling thread (so it lands in that thread's
    heap, where its later allocations look first) and has a daemon thread populate it in 4 MB chunks;
    :meth:`release` waits for the thread (populating is about twice as fast as faulting the same pages in one by one,
    so finishing beats stopping) and frees the block. Use it as a context manager, or call :meth:`release` in a
    ``finally``. Nothing is done (:attr:`active` stays False) below :data:`MIN_BYTES`, when the heap does not keep
    freed memory, or without a C library.

    Args:
        keeps_freed: whether the heap keeps freed blocks (:func:`~pivot_monai.engines.runtime.heap_keeps_freed`);
            without it the populated block would go back to the kernel on release.

    Example:
        >>> with HeapPrefault(keeps_freed=False) as pre:
        ...     pre.start(64 << 20)
        ...     pre.active
        False
    """

    def __init__(self, keeps_freed: bool) -> None:
        self.keeps_freed = bool(keeps_freed)
        self.nbytes = 0
        self._libc: ctypes.CDLL | None = None
        self._block: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether a block is held (being populated, or populated) and not yet released."""
        return self._thread is not None

    def start(self, nbytes: int) -> None:
        """Start populating ``nbytes`` of heap (once; later calls and calls below :data:`MIN_BYTES` do nothing)."""
        if self._thread is not None or not self.keeps_freed or int(nbytes) < MIN_BYTES:
            return
        self._libc = c_library()
        self._block = self._libc.malloc(int(nbytes)) if self._libc is not None else None
        if not self._block:
            return
        self.nbytes = int(nbytes)
        thread = threading.Thread(target=self._populate, name="pivot-heap-prefault", daemon=True)
        try:
            thread.start()
        except RuntimeError as err:  # no thread to be had: the forward faults its pages in itself, as without this
            logger.debug("heap prefault not started (%s)", err)
            self._libc.free(self._block)
            self._block = None
            return
        self._thread = thread

    def release(self) -> None:
        """Wait for the populating thread and free the block into the heap. Safe to call twice."""
        if self._thread is None:
            return
        self._thread.join()
        self._libc.free(self._block)
        self._thread = self._block = None
        logger.debug("heap prefault: %.0f MB handed to the heap", self.nbytes / 2**20)

    def __enter__(self) -> HeapPrefault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _populate(self) -> None:
        at = (self._block + _PAGE - 1) // _PAGE * _PAGE  # madvise takes whole pages
        end = (self._block + self.nbytes) // _PAGE * _PAGE
        populate = True
        while at < end:
            # chunk by chunk: the kernel holds the address-space lock while it populates, and the working thread's
            # own allocations wait for it when they grow the heap (one 120 MB call held up a 1 ms ITK region copy for
            # 29 ms); both calls release the GIL (ctypes)
            n = min(CHUNK_BYTES, end - at)
            if not (populate and self._libc.madvise(at, n, _MADV_POPULATE_WRITE) == 0):
                populate = False  # before Linux 5.14 (EINVAL): write the pages instead
                self._libc.memset(at, 0, n)
            at += n
