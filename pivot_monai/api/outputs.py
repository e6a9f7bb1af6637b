"""Reading what a session's training run wrote: metrics records, the log's tail, its checkpoints.

A session folder holds ``session.yaml`` (generated), ``train.log`` (the process's stdout and stderr, appended per
launch), ``metrics.jsonl`` (:mod:`pivot_monai.handlers.metrics_log`), ``models/`` (checkpoints) and ``logs/``
(TensorBoard). :class:`MetricsReader` parses ``metrics.jsonl`` incrementally: a poll reads only the bytes appended
since the previous one, so many clients polling a long run cost little.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["MetricsReader", "checkpoints", "resumable_checkpoint", "tail_lines"]

_RESUMABLE = re.compile(r"^checkpoint_epoch=(\d+)(?:_iteration=(\d+))?\.pt$")


class _Parsed:
    __slots__ = ("offset", "records", "inode")

    def __init__(self) -> None:
        self.offset, self.records, self.inode = 0, [], None


class MetricsReader:
    """Parsed ``metrics.jsonl`` records per file, read incrementally and shared by all requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[Path, _Parsed] = {}

    def records(self, path: Path) -> list[dict[str, Any]]:
        """Every complete record of ``path`` (``[]`` when the file does not exist yet), each with its ``seq``."""
        with self._lock:
            parsed = self._files.setdefault(path, _Parsed())
            try:
                stat = path.stat()
            except FileNotFoundError:
                self._files[path] = _Parsed()
                return []
            if stat.st_ino != parsed.inode or stat.st_size < parsed.offset:  # replaced or truncated: start over
                parsed = self._files[path] = _Parsed()
                parsed.inode = stat.st_ino
            if stat.st_size > parsed.offset:
                with path.open("rb") as f:
                    f.seek(parsed.offset)
                    chunk = f.read(stat.st_size - parsed.offset)
                end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
                for line in chunk[:end].splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        parsed.records.append({**record, "seq": len(parsed.records)})
                parsed.offset += end
            return parsed.records

    def forget(self, path: Path) -> None:
        with self._lock:
            self._files.pop(path, None)


def tail_lines(path: Path, lines: int = 200, max_bytes: int = 1 << 20) -> list[str]:
    """The last ``lines`` lines of a text file (reading at most ``max_bytes`` from its end); ``[]`` if missing."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    out = deque(text.splitlines(), maxlen=lines)
    return list(out)


def checkpoints(output_dir: Path) -> list[Path]:
    """Every ``.pt`` file under the session's ``models/``, oldest first."""
    folder = output_dir / "models"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.pt") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name))


def resumable_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that holds the trainer's state (``checkpoint_epoch=E[_iteration=I].pt``), or ``None``.

    ``model.pt`` and ``model_best.pt`` hold the weights only and cannot continue a run. Newest by modification
    time, ties broken by epoch and iteration.
    """
    found = []
    for path in checkpoints(output_dir):
        m = _RESUMABLE.match(path.name)
        if m and path.stat().st_size > 0:
            found.append(((path.stat().st_mtime, int(m[1]), int(m[2] or 0)), path))
    return max(found, key=lambda item: item[0])[1] if found else None
