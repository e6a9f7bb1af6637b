"""How much memory this process may still use: ``/proc/meminfo`` within the cgroup limit (containers, Slurm).

Shared by the training-memory check (:mod:`pivot_monai.engines.memory`) and the heap's low-memory release
(:func:`pivot_monai.host.allocator.release_freed_memory`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cgroup_available", "cgroup_limit", "ram_available", "ram_total"]

_CGROUP_FILES = (
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # v2
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
)


def cgroup_limit(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """This process's cgroup memory limit in bytes (v2, else v1); ``None`` without a limit."""
    for limit_file, *_ in _CGROUP_FILES:
        try:
            text = (Path(root) / limit_file).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= 2**60 else value
    return None


def cgroup_available(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1); ``None`` without a limit.

    The usage counts page cache; its inactive part is reclaimed before the kernel kills, so it counts as free.
    """
    root = Path(root)
    for limit_file, usage_file, stat_file, inactive in _CGROUP_FILES:
        try:
            text = (root / limit_file).read_text().strip()
            if text == "max" or int(text) >= 2**60:
                return None
            usage = int((root / usage_file).read_text())
            lines = (root / stat_file).read_text().splitlines()
            stats = dict(line.split() for line in lines if line.count(" ") == 1)
            reclaimable = int(stats.get(inactive, 0))  # page cache the kernel frees before killing
            return max(int(text) - usage + reclaimable, 0)
        except (OSError, ValueError):
            continue
    return None


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    raise OSError(f"/proc/meminfo has no {field}")


def ram_available() -> int:
    """Bytes of RAM available (``MemAvailable``, within a cgroup limit).

    Raises:
        OSError: ``/proc/meminfo`` cannot be read (not Linux).
    """
    available = _meminfo("MemAvailable")
    limited = cgroup_available()
    return min(available, limited) if limited is not None else available


def ram_total() -> int:
    """Bytes of RAM this process may use at most (``MemTotal``, within a cgroup limit).

    Raises:
        OSError: ``/proc/meminfo`` cannot be read (not Linux).
    """
    total = _meminfo("MemTotal")
    limit = cgroup_limit()
    return min(total, limit) if limit is not None else total
