"""Atomic file writes for every stage: checkpoints, ``model.pt``, ``candidates.csv``, reports, processed images.

:func:`atomic_open` writes through a temporary file in the target's own folder (``.<name>.<pid>.tmp``), flushes and
``fsync``s it, renames it over the target (``os.replace``, atomic on POSIX) and ``fsync``s the folder. A reader, or a
process killed at any moment, therefore sees either the old file or the complete new one, never a truncated file
under the final name. A failed write (a full disk, a read-only or missing folder, a kill) leaves the old file as it
was and at most the hidden temporary file, which :func:`remove_stale_temporaries` deletes; the ``OSError`` raised
names the file and keeps its ``errno``. :func:`atomic_output_path` does the same for writers that take a file name
(SimpleITK, nibabel): its temporary keeps the target's suffix (``.<stem>.<pid>.tmp.nii.gz``), which picks the format.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_output_path",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp(\.[A-Za-z0-9.]+)?$")  # .<name>.<pid>.tmp, or with the target's suffix


def _suffix(path: Path) -> str:
    """The suffix that tells a writer the format: ``.nii.gz`` for a compressed file, else the last suffix."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") and len(path.suffixes) > 1 else path.suffix


def _check_folder(path: Path) -> None:
    blocker = next((a for a in path.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot write {path}: {blocker} is a file, not a folder; choose another output path"
        )


def _failed(err: BaseException, tmp: Path, path: Path) -> OSError | None:
    """Remove ``tmp``; the ``OSError`` naming ``path`` to raise instead of ``err``, if it is one."""
    with contextlib.suppress(OSError):
        tmp.unlink()
    cause = err if isinstance(err, OSError) else err.__context__  # torch.save wraps the OSError
    if isinstance(cause, OSError) and cause.errno is not None:
        return OSError(cause.errno, f"cannot write {path} ({cause.strerror or cause}); the previous file is unchanged")
    return None


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all (module docstring).

    Args:
        path: the final file; its folder is created.
        mode: ``"w"`` (text) or ``"wb"`` (binary). Default ``"w"``.
        encoding: text encoding (ignored for binary). Default utf-8.
        newline: as for :func:`open` (``""`` for the ``csv`` module).

    Raises:
        OSError: the folder cannot be created or written (full disk, read-only filesystem); the target is untouched.

    Example:
        >>> with atomic_open(tmp / "candidates.csv", newline="") as f:
        ...     csv.writer(f).writerows(rows)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = _temporary(path)
    kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding, "newline": newline}
    _check_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        replacement = _failed(err, tmp, path)
        if replacement is not None:
            raise replacement from err
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name; moved over ``path`` atomically.

    The temporary keeps ``path``'s suffix (the writer picks the format from it). When the block ends, the file is
    ``fsync``ed, renamed over ``path`` and the folder ``fsync``ed, as :func:`atomic_open` does; an error (or a kill)
    leaves the old file. Only for formats written as one file: a ``.mhd`` header names its ``.raw`` by file name.

    Raises:
        ValueError: ``path`` is a ``.mhd`` (two files).
        OSError: the folder cannot be created or written; the target is untouched.

    Example:
        >>> with atomic_output_path(out / "image.nii.gz") as tmp:
        ...     sitk.WriteImage(image, str(tmp), useCompression=True)
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix.lower() == ".mhd":
        raise ValueError(f"{path}: a .mhd header names its .raw by file name and cannot be renamed; use .nii.gz")
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.{os.getpid()}.tmp{suffix}")
    _check_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        replacement = _failed(err, tmp, path)
        if replacement is not None:
            raise replacement from err
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file and move it to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (reports, JSON, CSV held in memory); returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (checkpoints, ``model.pt``); returns ``path``."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``; returns them."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        if not _TEMPORARY.match(tmp.name) or not tmp.is_file():
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    if removed:
        logger.info("removed %d unfinished temporary file(s) of an interrupted save in %s", len(removed), folder)
    return removed
