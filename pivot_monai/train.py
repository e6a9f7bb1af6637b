"""Training from a user config: ``pivot train --config my_train.yaml [--experiment-name NAME]``.

The user file holds only the keys they change (the guide's "Minimal Configuration"); :func:`~pivot_monai.config.
load_config` validates it against the bundle defaults and deep-merges it over them. :func:`train` writes the merged
config next to the outputs as ``config_resolved.yaml`` for provenance and runs it through the same MONAI bundle
workflow as ``python -m monai.bundle run training``.

Also runnable as ``python -m pivot_monai.train --config ...`` (e.g. under ``torchrun``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pivot_monai.config import default_config_path, load_config
from pivot_monai.engines.validate import validate_training_config

__all__ = ["run_training_workflow", "train"]


def run_training_workflow(config: dict[str, Any], config_dir: Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """Run the bundle's ``training`` workflow on an in-memory config (initialize -> training -> finalize).

    Errors raised inside config expressions come out as themselves, not under MONAI's "Failed to evaluate
    ConfigExpression" (:func:`pivot_monai.config.bundle.bundle_errors`), so ``pivot`` reports them in one line.

    Raises:
        ValueError: the config lacks a property the bundle's train workflow requires; or what an expression raised.
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
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"bundle config lacks required properties {missing}")
        workflow.run()
        workflow.finalize()
    return workflow


def train(
    config: str | Path | dict[str, Any] | None = None,
    *,
    experiment_name: str | None = None,
    base_configs: Sequence[str | Path] | None = None,
    bundle_root: str | None = None,
    dataset_dir: str | None = None,
    resume: bool | str | None = None,
) -> Any:
    """Train the detector from a user config merged over the bundle defaults.

    Args:
        config: the user's YAML (only the keys to change) or mapping; ``None``: the defaults.
        experiment_name: sub-folder of ``checkpointing.dir`` and ``logging.log_dir`` (and of ``<bundle_root>/runs``
            where ``config_resolved.yaml`` goes). Default ``None``.
        base_configs: bundle configs to merge the user file over, in order. Default ``bundle/configs/train.yaml``.
        bundle_root: override ``bundle_root`` (paths in the config are relative to it).
        dataset_dir: override ``dataset_dir`` (the processed data root).
        resume: ``checkpointing.resume`` override: ``True`` (``--resume``), ``False`` (``--restart``), a path; ``None``
            keeps the config's (default ``auto``: continue when ``checkpointing.dir`` holds a checkpoint).

    Returns:
        The finished MONAI ``ConfigWorkflow``.

    Raises:
        ConfigKeyError: an unknown key (the message suggests the closest valid key).
        ConfigValueError: a value of the wrong type or out of range (:mod:`pivot_monai.engines.validate`).
        FileNotFoundError: a config file does not exist.
    """
    merged = load_config(config, base_configs=base_configs, experiment_name=experiment_name)
    overrides = {k: v for k, v in (("bundle_root", bundle_root), ("dataset_dir", dataset_dir)) if v}
    merged.update(overrides)
    if resume is not None:
        merged.setdefault("checkpointing", {})["resume"] = resume
    validate_training_config(merged)  # literal values, before MONAI evaluates any expression
    out_root = Path(bundle_root or merged.get("bundle_root", "bundle")) / "runs" / (experiment_name or "default")
    return run_training_workflow(merged, out_root)


if __name__ == "__main__":
    from pivot_monai.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
