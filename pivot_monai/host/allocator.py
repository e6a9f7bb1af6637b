"""The host memory lever: glibc's heap keeps freed memory (``mallopt``).

PyTorch's CPU allocator keeps no cache, so with glibc's defaults every large activation of a whole-lung window is
fresh memory from the kernel, faulted in page by page inside the convolutions. :func:`reuse_freed_memory` sets the
two ``mallopt`` parameters that keep freed blocks in the heap (what preloading jemalloc or tcmalloc does for PyTorch's
CPU guide, set from inside the process). What it measured is in ``benchmarks/README.md`` ("Host levers").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

__all__ = ["c_library", "heap_keeps_freed", "reuse_freed_memory"]

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
