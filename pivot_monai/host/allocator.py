"""The host memory lever: glibc's heap keeps freed memory (``mallopt``).

PyTorch's CPU allocator keeps no cache, so with glibc's defaults every large activation of a whole-lung window is
fresh memory from the kernel, faulted in page by page inside the convolutions. :func:`reuse_freed_memory` sets the
two ``mallopt`` parameters that keep freed blocks in the heap (what preloading jemalloc or tcmalloc does for PyTorch's
CPU guide, set from inside the process). What it measured is in ``benchmarks/README.md`` ("Host levers").

The price is memory, and in a long-lived process it keeps growing: volumes of different sizes fragment the heap,
so a validation round over 16 scans left ~6 GB of freed memory in the training process on top of its caches, and a
wider network's run was killed by the kernel in its final validation. :func:`release_freed_memory` is the valve:
called after every whole-volume forward (:func:`pivot_monai.host.forward_context`), it hands the heap's free pages
back to the kernel (``malloc_trim``) when the host's available memory falls below a quarter of its total, so the
lever keeps its speed while memory is plentiful and costs page faults, not the run, when it is not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

__all__ = [
    "LOW_MEMORY_FRACTION",
    "c_library",
    "heap_free_bytes",
    "heap_keeps_freed",
    "release_freed_memory",
    "reuse_freed_memory",
]

logger = logging.getLogger(__name__)


@functools.cache
def c_library() -> ctypes.CDLL | None:
    """The process's C library (one handle per process), or ``None`` where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError as err:
        logger.debug("no C library for mallopt (%s)", err)
        return None


# mallopt(3) parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 2**31 - 1  # the largest value mallopt takes (an int): hand back only more than 2 GB of free heap top
_HEAP = {"keeps_freed": False, "released": 0}  # reuse_freed_memory applied in this process; releases logged so far

LOW_MEMORY_FRACTION = 0.25
"""Below this share of the host's memory available, :func:`release_freed_memory` hands the heap's free pages back."""
_GIB = 2**30


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


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): the heap's statistics in ``size_t`` fields."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_free_bytes() -> int | None:
    """Bytes of freed memory the main heap holds (``mallinfo2().fordblks``); ``None`` without glibc 2.33+."""
    libc = c_library()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def release_freed_memory(low_fraction: float | None = None) -> int:
    """Hand the heap's freed memory back to the kernel when the host runs low on memory (module docstring).

    Does nothing unless :func:`reuse_freed_memory` is in effect in this process. The first release of a process is
    logged at INFO, later ones at DEBUG.

    Args:
        low_fraction: release when the memory available (``MemAvailable`` within a cgroup limit) is below this share
            of the total. Default :data:`LOW_MEMORY_FRACTION`.

    Returns:
        Bytes the heap held free before the release (0 when nothing was released; -1 when released without
        ``mallinfo2`` to measure it).
    """
    from pivot_monai.host.meminfo import ram_available, ram_total

    if not _HEAP["keeps_freed"]:
        return 0
    libc = c_library()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return 0
    fraction = LOW_MEMORY_FRACTION if low_fraction is None else float(low_fraction)
    try:
        available, total = ram_available(), ram_total()
    except OSError:
        return 0
    if available >= fraction * total:
        return 0
    free = heap_free_bytes()
    libc.malloc_trim(0)
    released = -1 if free is None else free
    log = logger.info if _HEAP["released"] == 0 else logger.debug
    _HEAP["released"] += 1
    log(
        "host memory low (%.1f of %.1f GiB available): the heap handed back %s of freed memory "
        "(device.reuse_freed_memory keeps it for speed; later forwards fault it in again)",
        available / _GIB,
        total / _GIB,
        "its" if free is None else f"{free / _GIB:.1f} GiB",
    )
    return released
