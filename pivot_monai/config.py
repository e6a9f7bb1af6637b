"""Configuration files: the bundle defaults, YAML loading, deep merge and key validation.

The guide's sections (``data``, ``model``, ``training``, ``augmentation``, ``validation``, ``checkpointing``,
``logging``, ``device``, ``inference``) live in ``bundle/configs/train.yaml`` next to the MONAI components that use
them. A user file holding only the keys they change is deep-merged over those defaults; an unknown key is an error
that names it and suggests the closest valid one.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BUNDLE_DIR",
    "GUIDE_SECTIONS",
    "ConfigKeyError",
    "deep_merge",
    "default_config_path",
    "load_layered",
    "load_yaml",
    "validate_keys",
]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"
GUIDE_SECTIONS = (
    "data",
    "model",
    "training",
    "augmentation",
    "validation",
    "checkpointing",
    "logging",
    "device",
    "inference",
)
# keys whose values are free-form mappings (user kwargs, stage lists): their children are not validated
_FREE_FORM = {"model.kwargs", "training.curriculum.stages", "training.progressive.stages", "logging.wandb.init_kwargs"}


class ConfigKeyError(KeyError):
    """An unknown configuration key; the message names it and suggests the closest valid key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def default_config_path(name: str = "train.yaml") -> Path:
    """Path of a bundle config file, e.g. ``bundle/configs/train.yaml``."""
    return BUNDLE_DIR / "configs" / name


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping; an empty file gives ``{}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a mapping at top level.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: config file not found")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config sections at top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split("#")
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = copy.deepcopy(value)


def load_layered(paths: list[str | Path]) -> dict[str, Any]:
    """Merge config files in order, like ``--config_file "['a.yaml','b.yaml']"`` but deep.

    A key with MONAI's ``#`` separator (``data#patch_size``) sets that nested value; a plain mapping is
    deep-merged into what came before.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        for key, value in load_yaml(path).items():
            if "#" in str(key):
                _set_path(merged, str(key), value)
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def validate_keys(user: dict[str, Any], reference: dict[str, Any], prefix: str = "", source: str = "config") -> None:
    """Check that every key of ``user`` exists in ``reference`` (recursively).

    Raises:
        ConfigKeyError: naming the unknown key (dotted path) and suggesting the closest valid one.
    """
    for key, value in user.items():
        path = f"{prefix}{key}"
        if key not in reference:
            hint = difflib.get_close_matches(str(key), [str(k) for k in reference], n=1, cutoff=0.5)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            valid = ", ".join(sorted(str(k) for k in reference))
            raise ConfigKeyError(f"{source}: unknown key '{path}'{suggestion} (valid keys here: {valid})")
        if path in _FREE_FORM:
            continue
        if isinstance(value, dict) and isinstance(reference[key], dict):
            validate_keys(value, reference[key], prefix=f"{path}.", source=source)
