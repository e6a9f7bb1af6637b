"""Seed-style training entry point: ``pivot train --config my_train.yaml [--experiment-name NAME]``.

The user file holds only the keys they change (the guide's "Minimal Configuration"). It is validated against the
bundle defaults (``bundle/configs/train.yaml``): an unknown key is an error naming it and the closest valid key. It
is deep-merged over the defaults, written next to the outputs as ``config_resolved.yaml`` for provenance, and run
through the same MONAI bundle workflow as ``python -m monai.bundle run training``.

Also runnable as ``python -m pivot_monai.train --config ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pivot_monai.config import deep_merge, default_config_path, load_yaml, validate_keys

__all__ = ["add_train_arguments", "build_training_config", "main", "run_train", "run_training_workflow"]

logger = logging.getLogger(__name__)

_OUTPUT_KEYS = (("checkpointing", "dir"), ("logging", "log_dir"))


def build_training_config(
    user_config: str | Path | dict[str, Any] | None,
    experiment_name: str | None = None,
    base_configs: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """The merged config: bundle defaults (``base_configs``, in order) then the user's keys on top.

    ``experiment_name`` appends a sub-folder to ``checkpointing.dir`` and ``logging.log_dir``.

    Raises:
        ConfigKeyError: a user key that the defaults do not have (with a suggestion).
    """
    bases = [Path(p) for p in (base_configs or [default_config_path("train.yaml")])]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml(base))
    if user_config is not None:
        user = user_config if isinstance(user_config, dict) else load_yaml(user_config)
        validate_keys(user, merged, source=str(user_config) if not isinstance(user_config, dict) else "config")
        merged = deep_merge(merged, user)
    if experiment_name:
        for section, key in _OUTPUT_KEYS:
            value = merged[section][key]
            merged[section][key] = (
                f"{value} + '/{experiment_name}'" if str(value).startswith("$") else str(Path(value) / experiment_name)
            )
    return merged


def run_training_workflow(config: dict[str, Any], config_dir: Path, overrides: dict[str, Any] | None = None) -> Any:
    """Run the bundle's ``training`` workflow on an in-memory config (initialize -> training -> finalize)."""
    from monai.bundle import ConfigWorkflow

    config_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_dir / "config_resolved.yaml"
    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    workflow = ConfigWorkflow(
        config_file=str(resolved),
        meta_file=str(default_config_path("metadata.json")),
        logging_file=str(default_config_path("logging.conf")),
        workflow_type="train",
        run_id="training",
        **(overrides or {}),
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"bundle config lacks required properties {missing}")
    workflow.run()
    workflow.finalize()
    return workflow


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML with the keys to change (merged over bundle/configs/train.yaml); None = defaults only",
    )
    p.add_argument(
        "--experiment-name",
        default=None,
        help="sub-folder of checkpointing.dir and logging.log_dir for this run's outputs",
    )
    p.add_argument(
        "--base-config",
        type=Path,
        action="append",
        default=None,
        help="bundle config(s) to merge the user file over, in order (default: bundle train.yaml)",
    )
    p.add_argument("--bundle-root", default=None, help="override bundle_root (paths in the config are relative to it)")
    p.add_argument("--dataset-dir", default=None, help="override dataset_dir (the processed data root)")


def run_train(args: argparse.Namespace) -> int:
    config = build_training_config(args.config, args.experiment_name, args.base_config)
    overrides = {k: v for k, v in (("bundle_root", args.bundle_root), ("dataset_dir", args.dataset_dir)) if v}
    config.update(overrides)
    out_root = (
        Path(args.bundle_root or config.get("bundle_root", "bundle")) / "runs" / (args.experiment_name or "default")
    )
    run_training_workflow(config, out_root)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from pivot_monai.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
