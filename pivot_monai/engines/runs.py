"""Run folders: every training run writes ``runs/<experiment>/<timestamp>/`` and never another run's files.

A run folder holds everything of one run::

    runs/<experiment>/<YYYYmmdd-HHMMSS>/
        config_resolved.yaml     the merged config it ran with (rewritten by each launch of the run)
        train.log                the log of every launch, appended
        run.json                 run id, experiment, launches (start time, how it started)
        tensorboard/             logging.log_dir
        checkpoint_epoch=N.pt    resumable checkpoints (checkpointing.dir)
        model.pt, model_best.pt  the final and the best model (self-describing)

**Which run a rerun continues** (:func:`select_run`, by ``checkpointing.resume``):

* ``auto`` (the default): the newest run folder of the experiment, when it holds a readable checkpoint; otherwise
  a new folder (so a run that died before its first checkpoint is never mixed with the next one);
* ``true`` (``--resume``): the newest run folder of the experiment; an error when the experiment has none;
* ``false`` (``--restart``): always a new folder;
* a checkpoint path: the run folder it lies in when that is a run of this experiment, else a new folder.

"Newest" is the folder name: timestamps sort in time order. Nothing here imports ignite; ``bundle/models/model.pt``
is written only by an explicit export (``pivot train --export-to``, :func:`~pivot_monai.inference.export.
export_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from pivot_monai.engines.checkpoint import CheckpointError, atomic_write_text, list_checkpoints

__all__ = [
    "DEFAULT_EXPERIMENT",
    "RUNS_DIR",
    "RunLogHandler",
    "list_runs",
    "log_to_file",
    "new_run",
    "record_launch",
    "run_folder",
    "select_run",
    "start_run",
    "stop_logging_to_file",
]

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
"""Default root of the run folders, relative to the working directory."""
DEFAULT_EXPERIMENT = "default"
_STAMP = re.compile(r"^\d{8}-\d{6}(?:-\d+)?$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _experiment_dir(runs_root: str | Path, experiment: str | None) -> Path:
    name = experiment or DEFAULT_EXPERIMENT
    if not _SAFE_NAME.match(name):
        raise ValueError(f"--experiment-name must be a folder name (letters, digits, '.', '_', '-'), got {name!r}")
    return Path(runs_root) / name


def list_runs(runs_root: str | Path, experiment: str | None = None) -> list[Path]:
    """The run folders of ``experiment`` (default ``default``), oldest first."""
    folder = _experiment_dir(runs_root, experiment)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _STAMP.match(p.name))


def new_run(runs_root: str | Path, experiment: str | None = None) -> Path:
    """Create and return a new run folder ``<runs_root>/<experiment>/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ...
    when that second is taken)."""
    folder = _experiment_dir(runs_root, experiment)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = folder / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise OSError(f"{folder}: no free run folder name for {stamp}")


def select_run(runs_root: str | Path, experiment: str | None, mode: str | Path) -> tuple[Path, str]:
    """The run folder a launch writes to, and why (module docstring).

    Args:
        runs_root: the root of the run folders (``runs``).
        experiment: the experiment's name (``None``: ``default``).
        mode: ``checkpointing.resume`` as :func:`~pivot_monai.handlers.resume.resume_mode` gives it: ``"auto"``,
            ``"true"``, ``"false"`` or a checkpoint path.

    Returns:
        (run folder, a sentence for the log).

    Raises:
        CheckpointError: ``true`` and the experiment has no run yet.
    """
    runs = list_runs(runs_root, experiment)
    newest = runs[-1] if runs else None
    if isinstance(mode, Path):
        parent = mode.resolve().parent
        if any(parent == r.resolve() for r in runs):
            return parent, f"continuing run {parent} (checkpointing.resume names its {mode.name})"
        return new_run(runs_root, experiment), f"a new run resuming from {mode}"
    if mode == "true":
        if newest is None:
            raise CheckpointError(
                f"--resume: experiment {experiment or DEFAULT_EXPERIMENT!r} has no run in "
                f"{_experiment_dir(runs_root, experiment)} to continue; start one without --resume"
            )
        return newest, f"continuing the newest run {newest} (--resume)"
    if mode == "auto" and newest is not None and list_checkpoints(newest):
        return newest, f"continuing the newest run {newest}, which holds a checkpoint (--restart starts a new run)"
    why = "--restart" if mode == "false" else "no earlier run with a checkpoint"
    return new_run(runs_root, experiment), f"a new run ({why})"


_REASONS: dict[str, str] = {}  # run folder -> why this launch writes there (logged once the run's log file is open)


def run_folder(runs_root: str | Path, experiment: str | None, resume: Any) -> str:
    """The run folder of this launch, for ``checkpointing.dir`` (``"$pivot_monai.engines.runs.run_folder('runs',
    'demo', @checkpointing#resume)"``): :func:`select_run` on the main process, the same folder on every rank of a
    distributed run (broadcast from rank 0)."""
    import ignite.distributed as idist

    from pivot_monai.handlers.resume import resume_mode

    path = ""
    if idist.get_rank() == 0:
        folder, how = select_run(runs_root, experiment, resume_mode(resume))
        path = str(folder)
        _REASONS[path] = how
    if idist.get_world_size() > 1:
        path = idist.broadcast(path, src=0, safe_mode=True)
    return path


class RunLogHandler(logging.FileHandler):
    """The run folder's ``train.log`` (appended by every launch of the run)."""


def stop_logging_to_file() -> None:
    """Detach and close the :class:`RunLogHandler` of the root logger, if any."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, RunLogHandler)]:
        root.removeHandler(handler)
        handler.close()


def log_to_file(path: str | Path) -> RunLogHandler:
    """Copy the console's log records (INFO and above) into ``path``, in the console's format."""
    stop_logging_to_file()
    root = logging.getLogger()
    handler = RunLogHandler(path, mode="a", encoding="utf-8")
    formatter = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def start_run(run_dir: str | Path, config_file: str | Path | None = None) -> Path:
    """Open the run folder's ``train.log``, say why this launch writes there, and copy the merged config into it as
    ``config_resolved.yaml`` with its output folders written out (main process only; the bundle's ``initialize``
    calls it right after the distributed setup)."""
    import ignite.distributed as idist
    import yaml

    folder = Path(run_dir)
    if idist.get_rank() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    log_to_file(folder / "train.log")
    logger.info("run folder %s: %s", folder, _REASONS.get(str(folder), "given by checkpointing.dir"))
    if config_file is not None and Path(config_file).is_file():
        config = yaml.safe_load(Path(config_file).read_text()) or {}
        config.setdefault("checkpointing", {})["dir"] = str(folder)
        config.setdefault("logging", {})["log_dir"] = str(folder / "tensorboard")
        atomic_write_text(folder / "config_resolved.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder


def record_launch(run_dir: str | Path, experiment: str | None, run_id: str | None, how: str | None = None) -> dict:
    """Append this launch to ``run.json`` in ``run_dir`` (run id, experiment, every launch's time and reason);
    main process only."""
    import ignite.distributed as idist

    if idist.get_rank() != 0:
        return {}
    how = how or _REASONS.get(str(run_dir), "given by checkpointing.dir")
    path = Path(run_dir) / "run.json"
    record: dict[str, Any] = {"experiment": experiment or DEFAULT_EXPERIMENT, "run_id": run_id, "launches": []}
    if path.is_file():
        try:
            record.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            logger.warning("%s is unreadable; starting its launch list again", path)
    record["run_id"] = run_id or record.get("run_id")
    record["launches"] = [*record.get("launches", []), {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "how": how}]
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record
