"""The training checkpoints of a run folder: naming, listing, reading, rotation.

Checkpoints are written with :func:`~pivot_monai.files.atomic_save` (re-exported here with the other atomic writes
of :mod:`pivot_monai.files`): a kill or a full disk never leaves a partial file under a checkpoint's name.

**Checkpoint files.** A run folder (``checkpointing.dir``) holds ``checkpoint_epoch=E.pt`` written after epoch ``E``
and ``checkpoint_epoch=E_iteration=I.pt`` written by a stop inside epoch ``E`` at global iteration ``I``.
:func:`list_checkpoints` orders them oldest first; :func:`load_checkpoint` reads one with
``torch.load(weights_only=True)``; :func:`newest_valid_checkpoint` walks them newest first, and a file that cannot be
read is renamed ``*.corrupt`` (kept for inspection, never picked again) with a warning naming the one it falls back
to. Nothing here imports ignite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pivot_monai.files import atomic_open, atomic_save, atomic_write, atomic_write_text, remove_stale_temporaries

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointFile",
    "atomic_open",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint",
    "newest_valid_checkpoint",
    "remove_stale_temporaries",
    "rotate_checkpoints",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout (``pivot`` entry); 1 is MONAI ``CheckpointSaver``'s (no ``pivot`` entry)."""

_NAME = re.compile(r"^checkpoint_epoch=(\d+)(?:_iteration=(\d+))?\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file, what was expected and what to do."""


# ------------------------------------------------------------------------------------------------ checkpoint files
@dataclass(frozen=True, order=True)
class CheckpointFile:
    """A checkpoint in a run folder, ordered by training progress.

    Attributes:
        completed: epochs completed when it was written.
        iteration: global iteration of a mid-epoch checkpoint, ``-1`` for an end-of-epoch one.
        path: the file.
    """

    completed: int
    iteration: int
    path: Path

    @property
    def partial(self) -> bool:
        """Whether it was written inside an epoch (by a stop), not after one."""
        return self.iteration >= 0


def checkpoint_name(epoch: int, iteration: int | None = None) -> str:
    """``checkpoint_epoch=E.pt`` after epoch ``E``, or ``checkpoint_epoch=E_iteration=I.pt`` inside epoch ``E``."""
    return (
        f"checkpoint_epoch={int(epoch)}.pt"
        if iteration is None
        else f"checkpoint_epoch={int(epoch)}_iteration={int(iteration)}.pt"
    )


def list_checkpoints(folder: str | Path) -> list[CheckpointFile]:
    """The checkpoints in ``folder``, oldest first (a mid-epoch one sorts between its epoch's start and end)."""
    out = []
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            epoch, iteration = int(match.group(1)), match.group(2)
            out.append(
                CheckpointFile(
                    epoch if iteration is None else epoch - 1, -1 if iteration is None else int(iteration), path
                )
            )
    # after epoch E come the mid-epoch files of epoch E + 1 (completed E), then the end of epoch E + 1
    return sorted(out, key=lambda c: (c.completed, 1 if c.partial else 0, c.iteration))


def _short(err: BaseException) -> str:
    """The first line of ``err`` without PyTorch's advice to retry with ``weights_only=False`` (unsafe on untrusted
    files)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain values (not a PIVOT training checkpoint)"
    return f"{type(err).__name__}: {text}"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a ``torch.save`` dict, or lacks ``model`` /
            ``trainer``; the message names the file and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpointing.resume: {path} does not exist; expected a checkpoint_epoch=N.pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes; an interrupted save?); use an earlier checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle, EOF and unpickler errors all mean "unreadable"
        raise CheckpointError(f"{path}: checkpoint is unreadable ({_short(err)}); use an earlier checkpoint") from err
    if not isinstance(state, dict) or not {"model", "trainer"} <= set(state):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a training checkpoint: expected a dict with 'model' and 'trainer' (got {got}); "
            "model.pt / model_best.pt hold weights only and cannot be resumed"
        )
    return state


def newest_valid_checkpoint(
    folder: str | Path, map_location: Any = "cpu"
) -> tuple[CheckpointFile, dict[str, Any]] | None:
    """The newest checkpoint of ``folder`` that reads, with its contents; ``None`` when there is none.

    A newer file that does not read is renamed ``<name>.corrupt`` and a warning says which one is used instead.
    """
    skipped: list[str] = []
    for entry in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(entry.path, map_location)
        except CheckpointError as err:
            corrupt = entry.path.with_name(entry.path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(entry.path, corrupt)
            logger.warning("%s (renamed to %s)", err, corrupt.name)
            skipped.append(entry.path.name)
            continue
        if skipped:
            logger.warning("falling back to %s: the newer %s could not be read", entry.path.name, ", ".join(skipped))
        return entry, state
    if skipped:
        logger.warning("no readable checkpoint in %s (%d unreadable)", folder, len(skipped))
    return None


def rotate_checkpoints(folder: str | Path, keep: int | None, protect: Path | None = None) -> list[Path]:
    """Delete the oldest checkpoints of ``folder`` beyond the newest ``keep``; returns the deleted files.

    ``protect`` (the file just written) is never deleted, nor is the newest file, so the folder always keeps a valid
    checkpoint; ``model.pt`` and ``model_best.pt`` are not checkpoints in this sense and are never touched.
    ``keep`` ``None`` or < 1 keeps everything.
    """
    if keep is None or int(keep) < 1:
        return []
    entries = list_checkpoints(folder)
    removed = []
    for entry in entries[: max(len(entries) - int(keep), 0)]:
        if protect is not None and entry.path.resolve() == Path(protect).resolve():
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
            removed.append(entry.path)
    return removed
