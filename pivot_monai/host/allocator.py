"""The host memory levers: glibc's heap keeps freed memory (``mallopt``), and faulting in a forward's memory ahead.

PyTorch's CPU allocator keeps no cache, so with glibc's defaults every large activation of a whole-lung window is
fresh memory from the kernel, faulted in page by page inside the convolutions. :func:`reuse_freed_memory` sets the
two ``mallopt`` parameters that keep freed blocks in the heap (what preloading jemalloc or tcmalloc does for PyTorch's
CPU guide, set from inside the process). :class:`HeapPrefault` uses an idle core to fault in the next forward's
memory (``madvise(MADV_POPULATE_WRITE)``) and hands it to that heap. What each measured is in
``benchmarks/README.md`` ("Host levers").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import platform
import threading

__all__ = ["HeapPrefault", "c_library", "heap_free_bytes", "heap_keeps_freed", "reuse_freed_memory"]

logger = logging.getLogger(__name__)

MIN_BYTES = 8 << 20
"""Smaller requests are left to the forward: a thread costs more than faulting them in."""

CHUNK_BYTES = 4 << 20
"""Bytes populated per ``madvise`` call."""

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
    :func:`reuse_freed_memory` (``mallopt``; ``mallinfo2`` only exists from glibc 2.33).
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
        keeps_freed: whether the heap keeps freed blocks (:func:`heap_keeps_freed`);
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
            # own allocations wait for it when they grow the heap; both calls release the GIL (ctypes)
            n = min(CHUNK_BYTES, end - at)
            if not (populate and self._libc.madvise(at, n, _MADV_POPULATE_WRITE) == 0):
                populate = False  # before Linux 5.14 (EINVAL): write the pages instead
                self._libc.memset(at, 0, n)
            at += n


# mallopt(3) parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 2**31 - 1  # the largest value mallopt takes (an int): hand back only more than 2 GB of free heap top
_HEAP = {"keeps_freed": False}  # whether reuse_freed_memory has been applied in this process


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Serve large host allocations from the process heap and keep freed memory there for reuse (glibc only).

    glibc serves every allocation above its mmap threshold with fresh pages from the kernel and returns them on free;
    PyTorch's CPU allocator keeps no cache, so each forward of a whole-lung window faults in and zero-fills all of its
    activations again. This sets the two ``mallopt`` parameters that keep them: no mmap for large blocks, and no
    trimming of the heap's top below 2 GB. The cost is memory: the process keeps its high-water mark until it exits.
    It applies to allocations made after the call, in this process and in the processes it forks later.

    Args:
        enabled: ``device.reuse_freed_memory``; ``False`` does nothing.

    Returns:
        Whether the setting was applied (``False`` when disabled, or off glibc, e.g. macOS or musl).
    """
    if not enabled:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("device.reuse_freed_memory: not glibc (%s), left as it is", platform.libc_ver())
        return False
    libc = c_library()
    if libc is None or not hasattr(libc, "mallopt"):  # no libc to load, or a libc without mallopt
        logger.debug("device.reuse_freed_memory: mallopt unavailable")
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    _HEAP["keeps_freed"] = _HEAP["keeps_freed"] or bool(ok)
    return bool(ok)


def heap_keeps_freed() -> bool:
    """Whether :func:`reuse_freed_memory` has been applied in this process (large freed blocks stay in the heap)."""
    return _HEAP["keeps_freed"]
