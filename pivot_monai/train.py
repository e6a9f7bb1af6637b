"""Training from a user config: ``pivot train --config my_train.yaml [--experiment-name NAME] [--export-to PATH]``.

The user file holds only the keys they change (the guide's "Minimal Configuration"); :func:`~pivot_monai.config.
load_config` validates it against the bundle defaults and deep-merges it over them. :func:`train` runs it through the
same MONAI bundle workflow as ``python -m monai.bundle run training``.

Each run writes its own folder ``runs/<experiment>/<timestamp>/`` (checkpoints, ``model.pt``, ``model_best.pt``,
``tensorboard/``, ``config_resolved.yaml``, ``train.log``, ``run.json``); a rerun continues the newest run of the
experiment when it holds a checkpoint, ``--restart`` starts a new one (:mod:`pivot_monai.engines.runs`). Every model
file of the run describes itself (:func:`~pivot_monai.handlers.resume.attach_model_metadata`). A config that sets
``checkpointing.dir`` itself keeps that folder (plus ``experiment_name``), as before. ``bundle/models/model.pt`` is
written only by ``--export-to``.

Also runnable as ``python -m pivot_monai.train --config ...`` (e.g. under ``torchrun``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pivot_monai.config import default_config_path, load_config
from pivot_monai.engines.memory import check_training_memory
from pivot_monai.engines.runs import DEFAULT_EXPERIMENT, RUNS_DIR, stop_logging_to_file
from pivot_monai.engines.validate import validate_training_config

__all__ = ["initialize_training_workflow", "run_training_workflow", "train"]


def initialize_training_workflow(
    config: dict[str, Any], config_dir: Path, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The bundle's ``training`` workflow on an in-memory config, written to ``config_dir/config_resolved.yaml`` and
    initialised (everything up to the trainer's start).

    Errors raised inside config expressions come out as themselves, not under MONAI's "Failed to evaluate
    ConfigExpression" (:func:`pivot_monai.config.bundle.bundle_errors`), so ``pivot`` reports them in one line.
    """
    from monai.bundle import ConfigWorkflow

    from pivot_monai.config.bundle import bundle_errors

    config_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_dir / "config_resolved.yaml"
    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    workflow = ConfigWorkflow(
        config_file=str(resolved),
        meta_file=str(default_config_path("metadata.json")),
        logging_file=str(default_config_path("logging.conf")),
        workflow_type="train",
        run_id="training",
        **dict(overrides or {}),
    )
    with bundle_errors():
        workflow.initialize()
    return workflow


def run_training_workflow(config: dict[str, Any], config_dir: Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """Run the bundle's ``training`` workflow on an in-memory config (initialize -> training -> finalize).

    Raises:
        ValueError: the config lacks a property the bundle's train workflow requires; or what an expression raised
            (:func:`initialize_training_workflow`).
    """
    from pivot_monai.config.bundle import bundle_errors

    workflow = initialize_training_workflow(config, config_dir, overrides)
    with bundle_errors():
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"bundle config lacks required properties {missing}")
        workflow.run()
        workflow.finalize()
    return workflow


def _use_run_folder(merged: dict[str, Any], runs_dir: Path, experiment: str | None) -> None:
    """Point ``checkpointing.dir`` and ``logging.log_dir`` at this launch's run folder and add the run's hooks to
    ``initialize`` (open ``train.log`` after the distributed setup; describe the model files and record the launch
    last)."""
    exp = experiment or DEFAULT_EXPERIMENT
    merged["checkpointing"]["dir"] = (
        f"$pivot_monai.engines.runs.run_folder({str(runs_dir)!r}, {exp!r}, @checkpointing#resume)"
    )
    merged["logging"]["log_dir"] = "$@checkpointing#dir + '/tensorboard'"
    steps = list(merged.get("initialize") or [])
    after = next((i + 1 for i, step in enumerate(steps) if "distributed.setup" in str(step)), 0)
    config_copy = str(runs_dir / exp / "config_resolved.yaml")
    steps.insert(after, f"$pivot_monai.engines.runs.start_run(@checkpointing#dir, {config_copy!r})")
    sections = "{'model': @model, 'data': @data, 'inference': @inference}"
    steps += [
        "$pivot_monai.handlers.resume.attach_model_metadata(@train#trainer, @validate#evaluator, "
        f"@train#checkpointer, {sections}, {exp!r})",
        f"$pivot_monai.engines.runs.record_launch(@checkpointing#dir, {exp!r}, @train#checkpointer.run_id)",
    ]
    merged["initialize"] = steps
    merged["imports"] = [*list(merged.get("imports") or []), "$import pivot_monai.engines.runs"]


def train(
    config: str | Path | dict[str, Any] | None = None,
    *,
    experiment_name: str | None = None,
    base_configs: Sequence[str | Path] | None = None,
    bundle_root: str | None = None,
    dataset_dir: str | None = None,
    resume: bool | str | None = None,
    runs_dir: str | Path = RUNS_DIR,
    export_to: str | Path | None = None,
) -> Any:
    """Train the detector from a user config merged over the bundle defaults, in a run folder of its own.

    Args:
        config: the user's YAML (only the keys to change) or mapping; ``None``: the defaults.
        experiment_name: the experiment: runs go to ``<runs_dir>/<experiment_name>/<timestamp>/`` (default
            ``default``); with a ``checkpointing.dir`` of the config's own, a sub-folder of it and of
            ``logging.log_dir``. Default ``None``.
        base_configs: bundle configs to merge the user file over, in order. Default ``bundle/configs/train.yaml``.
        bundle_root: override ``bundle_root`` (paths in the config are relative to it).
        dataset_dir: override ``dataset_dir`` (the processed data root).
        resume: ``checkpointing.resume`` override: ``True`` (``--resume``: continue the newest run), ``False``
            (``--restart``: a new run), a checkpoint path; ``None`` keeps the config's (default ``auto``: continue
            the newest run when it holds a checkpoint, else a new run).
        runs_dir: the root of the run folders. Default ``runs`` (in the working directory).
        export_to: after training, write the run's ``model.pt`` there as a self-describing model (e.g.
            ``bundle/models/model.pt``; :func:`~pivot_monai.inference.export.export_checkpoint`). Default None.

    Returns:
        The finished MONAI ``ConfigWorkflow``.

    Raises:
        ConfigKeyError: an unknown key (the message suggests the closest valid key).
        ConfigValueError: a value of the wrong type or out of range (:mod:`pivot_monai.engines.validate`).
        FileNotFoundError: a config file does not exist.
        CheckpointError: ``--resume`` and the experiment has no run.
    """
    from pivot_monai.inference.model_settings import explicit_keys

    own = explicit_keys(config)
    legacy = "dir" in (own.get("checkpointing") or {}) or "log_dir" in (own.get("logging") or {})
    merged = load_config(config, base_configs=base_configs, experiment_name=experiment_name if legacy else None)
    overrides = {k: v for k, v in (("bundle_root", bundle_root), ("dataset_dir", dataset_dir)) if v}
    merged.update(overrides)
    if resume is not None:
        merged.setdefault("checkpointing", {})["resume"] = resume
    validate_training_config(merged)  # literal values, before MONAI evaluates any expression
    check_training_memory(merged)  # a step that cannot fit in memory is refused before anything is built
    if legacy:
        out_root = Path(bundle_root or merged.get("bundle_root", "bundle")) / "runs" / (experiment_name or "default")
    else:
        _use_run_folder(merged, Path(runs_dir), experiment_name)
        out_root = Path(runs_dir) / (experiment_name or DEFAULT_EXPERIMENT)
    try:
        workflow = run_training_workflow(merged, out_root)
    finally:
        stop_logging_to_file()
    if export_to is not None:
        from pivot_monai.inference.export import export_checkpoint

        parser = workflow.parser  # the objects of this run (resolved once): its checkpointer's folder
        folder = Path(parser.get_parsed_content("train#checkpointer").save_dir)
        export_checkpoint(folder / parser.get_parsed_content("checkpointing#final_name"), None, export_to)
    return workflow


if __name__ == "__main__":
    from pivot_monai.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
