"""From a request to a training command: the config file check, the session folder name and the session config.

MONAI configs execute ``$`` expressions, so choosing a config is choosing code. :func:`resolve_config_path` accepts
only a file that resolves, symlinks included, inside the configs root. The session config
(``<session>/session.yaml``) is generated here, never sent by a client: the chosen file's keys flattened to MONAI
``#`` ids (so ``--config_file "['train.yaml','session.yaml']"`` deep-merges it, as ``pivot train --config`` does),
then the whitelisted overrides, the session's output folders, the metrics log and whether to resume
(``checkpointing.resume``, :mod:`pivot_monai.handlers.resume`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from pivot_monai.config import deep_merge, guide_names, load_layered, load_yaml, validate_keys

__all__ = [
    "CONFIG_SUFFIXES",
    "ConfigPathError",
    "SessionConfigError",
    "build_command",
    "flatten_config",
    "resolve_config_path",
    "safe_name",
    "session_config",
    "validate_session_config",
    "write_session_config",
]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_FREE_FORM = {"model#kwargs", "training#curriculum#stages", "training#progressive#stages", "logging#wandb#init_kwargs"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")


class ConfigPathError(ValueError):
    """A ``config_path`` that is not a config file inside the configs root (HTTP 400)."""


class SessionConfigError(ValueError):
    """A config file or override the run would fail on (HTTP 422); ``field`` names the request field."""

    def __init__(self, message: str, field: str = "config_path") -> None:
        super().__init__(message)
        self.field = field


def resolve_config_path(config_path: str, root: Path) -> Path:
    """The real path of ``config_path`` (relative to ``root``), which must be a config file inside ``root``.

    Args:
        config_path: as the client sent it, e.g. ``demo.yaml`` or ``experiments/a.yaml``. An absolute path is
            accepted only when it resolves inside ``root``.
        root: the configs root (already resolved).

    Raises:
        ConfigPathError: NUL bytes, a path resolving (``..``, symlinks) outside ``root``, a missing file, a folder
            or a suffix other than ``.yaml``/``.yml``/``.json``.
    """
    if "\x00" in config_path:
        raise ConfigPathError("config_path must not contain NUL bytes")
    try:
        resolved = (root / config_path).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops
        raise ConfigPathError(f"config_path {config_path!r} cannot be resolved: {err}") from None
    if not resolved.is_relative_to(root):
        raise ConfigPathError(
            f"config_path {config_path!r} resolves outside the configs root {root}; name a file inside it, e.g. "
            "'demo.yaml'"
        )
    if not resolved.is_file():
        raise ConfigPathError(f"config_path {config_path!r}: no such config file under the configs root {root}")
    if resolved.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigPathError(f"config_path {config_path!r} must end in one of {', '.join(CONFIG_SUFFIXES)}")
    return resolved


def safe_name(name: str | None, fallback: str = "session", max_length: int = 48) -> str:
    """``name`` reduced to ``[A-Za-z0-9._-]`` for a folder name: no separators, no leading dots, bounded length."""
    out = _UNSAFE.sub("_", name or "").strip("._-")[:max_length].strip("._-")
    return out or fallback


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"patch_size": [...]}}`` -> ``{"data#patch_size": [...]}``: one MONAI id per leaf value.

    Mappings are walked (except the free-form ones, set whole); lists and scalars are leaves.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _FREE_FORM:
            out.update(flatten_config(value, f"{path}#"))
        else:
            out[path] = value
    return out


def _base_and_user(config_file: Path, base_config: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        base = load_yaml(base_config)
        if config_file == base_config:
            return base, {}
        user = load_layered([config_file])
    except (ValueError, yaml.YAMLError) as err:
        raise SessionConfigError(f"{config_file.name}: not a readable config mapping: {err}") from None
    try:  # the training guide's names map onto PIVOT's, as in pivot train
        user = guide_names(user, config_file.name, base=base)
    except ValueError as err:  # a guide key PIVOT cannot honour: the message says what to use instead
        raise SessionConfigError(str(err)) from None
    validate_keys(user, base, source=config_file.name)
    return base, user


def validate_session_config(config_file: Path, base_config: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The merged config of a session (for checks); raises what a bad session would fail on at start.

    Raises:
        ConfigKeyError: the config file has a key ``train.yaml`` does not (with a suggestion).
        SessionConfigError: the file is not a config mapping, or an override does not fit the rest of the config
            (patch size not divisible by ``2 ** model.depth``).
    """
    base, user = _base_and_user(config_file, base_config)
    merged = deep_merge(base, user)
    patch = overrides.get("data#patch_size")
    depth = (merged.get("model") or {}).get("depth")
    if patch is not None and isinstance(depth, int):
        bad = [p for p in patch if p < 8 or p > 1024 or p % 2**depth]
        if bad:
            raise SessionConfigError(
                f"overrides.patch_size {patch}: each side must be 8-1024 voxels and divisible by 2 ** model.depth = "
                f"{2**depth} ({config_file.name})",
                field="overrides.patch_size",
            )
    return merged


def session_config(
    config_file: Path,
    base_config: Path,
    overrides: dict[str, Any],
    output_dir: Path,
    attempt: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """The ``session.yaml`` mapping layered over ``base_config`` for one launch of a session.

    Args:
        config_file: the checked config file (:func:`resolve_config_path`).
        base_config: ``bundle/configs/train.yaml``.
        overrides: ``{config id: value}`` from :meth:`TrainingOverrides.config_ids`.
        output_dir: the session folder; checkpoints go to ``models/``, TensorBoard to ``logs/``, metrics to
            ``metrics.jsonl``.
        attempt: 1 for the first launch, +1 per resume (written into every metrics record).
        resume: continue from the newest readable checkpoint in ``models/`` (``checkpointing.resume: true``);
            ``False`` starts a new run (``false``). Default ``False``.

    Raises:
        ConfigKeyError, SessionConfigError: as :func:`validate_session_config`.
    """
    base, user = _base_and_user(config_file, base_config)
    merged = deep_merge(base, user)
    out = flatten_config(user)
    out.update(overrides)
    out["checkpointing#dir"] = str(output_dir / "models")
    out["logging#log_dir"] = str(output_dir / "logs")
    out["checkpointing#resume"] = "true" if resume else "false"
    metrics = str(output_dir / "metrics.jsonl")
    hook = (
        f"$pivot_monai.handlers.metrics_log.attach_metrics_log(@train#trainer, @validate#evaluator, {metrics!r}, "
        f"@loss, {int(attempt)})"
    )
    out["initialize"] = [*list(merged.get("initialize") or []), hook]
    out["imports"] = [*list(merged.get("imports") or []), "$import pivot_monai.handlers.metrics_log"]
    return out


def write_session_config(config: dict[str, Any], path: Path) -> Path:
    """Write the session config as YAML (ids in insertion order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# generated by the PIVOT training API for one launch of this session; layered over train.yaml\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def build_command(base_config: Path, session_file: Path) -> list[str]:
    """The user's own training command on the layered configs."""
    files = repr([str(base_config), str(session_file)])
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files]
