"""The one place configs are loaded, layered, validated and sectioned.

The guide's sections (``data``, ``model``, ``training``, ``augmentation``, ``validation``, ``checkpointing``,
``logging``, ``device``, ``inference``) live in ``bundle/configs/train.yaml`` next to the MONAI components that use
them. A user file holding only the keys they change is deep-merged over those defaults; an unknown key is an error
that names it and suggests the closest valid one. :func:`load_config` is what every entry point runs on (``pivot
train``, ``infer``, ``evaluate``, ``preprocess``); :func:`load_sections` gives its guide sections.

* :mod:`pivot_monai.config.guide`: the training guide's names mapped onto PIVOT's (run by :func:`load_config`);
* :mod:`pivot_monai.config.bundle`: the same schema for ``python -m monai.bundle run training --config_file [...]``,
  whose config MONAI merges itself (run by ``train.yaml``'s ``initialize``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pivot_monai.config.guide import guide_names, translate

__all__ = [
    "BUNDLE_DIR",
    "GUIDE_SECTIONS",
    "INFERENCE_SECTIONS",
    "ConfigKeyError",
    "deep_merge",
    "default_config_path",
    "expand_paths",
    "guide_names",
    "load_config",
    "load_layered",
    "load_section",
    "load_sections",
    "load_yaml",
    "translate",
    "validate_keys",
    "walk_keys",
]


def _bundle_dir() -> Path:
    """The checkout's ``bundle/``, else the copy an installed wheel ships as ``pivot_monai/_bundle`` (setup.py)."""
    here = Path(__file__).resolve()
    checkout, shipped = here.parents[2] / "bundle", here.parents[1] / "_bundle"
    return shipped if not (checkout / "configs" / "train.yaml").is_file() and shipped.is_dir() else checkout


BUNDLE_DIR = _bundle_dir()
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
INFERENCE_SECTIONS = ("data", "model", "inference", "device")
_OUTPUT_KEYS = (("checkpointing", "dir"), ("logging", "log_dir"))
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
        ValueError: the file is not valid YAML (the message gives the line and column), or not a mapping at top
            level.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        start = getattr(err, "context_mark", None)
        if start is not None and getattr(err, "context", None):
            problem += f" ({err.context} that starts at line {start.line + 1}, column {start.column + 1})"
        raise ValueError(f"{p}: not valid YAML{where}: {problem}; fix the syntax there") from err
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
        merged = deep_merge(merged, expand_paths(load_yaml(path)))
    return merged


_UNSET = object()


def walk_keys(
    user: Mapping[str, Any], reference: Mapping[str, Any], skip: Collection[str] = (), _path: str = ""
) -> Iterator[tuple[str, Any, Any, Mapping[str, Any]]]:
    """Each key of ``user`` against ``reference`` (its defaults), recursively: ``(dotted path, key, value, section)``.

    ``section`` is the reference mapping the key belongs to: the key is unknown when it is not in it. Known keys
    whose value and default are both mappings are descended into, not yielded, unless the path is in ``skip`` (a
    free-form section) or the user's mapping names another MONAI ``_target_`` (its arguments are its own).
    """
    for key, value in user.items():
        path = f"{_path}.{key}" if _path else str(key)
        default = reference.get(key, _UNSET)
        if isinstance(value, Mapping) and isinstance(default, Mapping) and path not in skip:
            if "_target_" in value and value["_target_"] != default.get("_target_"):
                continue
            yield from walk_keys(value, default, skip, path)
        elif path not in skip or default is _UNSET:
            yield path, key, value, reference


def validate_keys(user: dict[str, Any], reference: dict[str, Any], source: str = "config") -> None:
    """Check that every key of ``user`` exists in ``reference`` (recursively).

    Raises:
        ConfigKeyError: naming the unknown key (dotted path) and suggesting the closest valid one.
    """
    for path, key, _, section in walk_keys(user, reference, skip=_FREE_FORM):
        if key in section:
            continue
        prefix = path[: len(path) - len(str(key))]
        hint = difflib.get_close_matches(str(key), [str(k) for k in section], n=1, cutoff=0.5)
        suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
        valid = ", ".join(sorted(str(k) for k in section))
        raise ConfigKeyError(f"{source}: unknown key '{path}'{suggestion} (valid keys here: {valid})")


def expand_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with MONAI's ``#``-separated keys (``data#patch_size: ...``) turned into nested mappings.

    Mappings given for the same section merge (deeply), in file order.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if "#" in str(key):
            _set_path(out, str(key), value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_STAGE_SECTIONS = {"fpr": "fpr.yaml"}
"""Sections of stages whose bundle file is layered on its own (``fpr.yaml`` replaces ``run``): their defaults join
every default config, so a user's ``--config`` may set them (``fpr.checkpoint``, ``fpr.fusion_weight``)."""


def _with_stage_sections(merged: dict[str, Any]) -> dict[str, Any]:
    for section, name in _STAGE_SECTIONS.items():
        path = default_config_path(name)
        if section not in merged and path.exists():
            merged[section] = load_yaml(path).get(section, {})
    return merged


def load_config(
    config: str | Path | dict[str, Any] | None = None,
    *,
    base_configs: Sequence[str | Path] | None = None,
    experiment_name: str | None = None,
) -> dict[str, Any]:
    """The merged config every entry point runs on: the bundle defaults, then the user's keys on top, validated.

    The user file holds only the keys it changes (the guide's "Minimal Configuration"), as nested mappings or with
    MONAI's ``#`` paths (``data#patch_size``, as in ``bundle/configs/demo.yaml``); mappings are deep-merged. The
    training guide's names are mapped onto PIVOT's first (:func:`guide_names`). A file that is one of the base configs
    is taken as it is.

    Args:
        config: the user's YAML file or mapping; ``None``: the defaults only.
        base_configs: the bundle configs layered first, in order. Default: ``bundle/configs/train.yaml``.
        experiment_name: a sub-folder appended to ``checkpointing.dir`` and ``logging.log_dir``. Default none.

    Returns:
        The merged config (``$``/``@`` expressions left as strings for the bundle parser).

    Raises:
        FileNotFoundError: a config file does not exist.
        ConfigKeyError: a user key the defaults do not have (the message suggests the closest valid key).
        ValueError: a file is not a mapping at top level.
    """
    bases = [Path(p) for p in (base_configs or [default_config_path()])]
    merged = load_layered([p for p in bases if p.exists() or base_configs])
    if base_configs is None:
        merged = _with_stage_sections(merged)
    if config is not None:
        is_base = not isinstance(config, dict) and any(Path(config).resolve() == b.resolve() for b in bases)
        if not is_base:
            where = "config" if isinstance(config, dict) else str(config)
            user = expand_paths(config if isinstance(config, dict) else load_yaml(config))
            user = guide_names(user, where, base=merged)
            validate_keys(user, merged, source=where)
            merged = deep_merge(merged, user)
    if experiment_name:
        for section, key in _OUTPUT_KEYS:
            value = merged[section][key]
            merged[section][key] = (
                f"{value} + '/{experiment_name}'" if str(value).startswith("$") else str(Path(value) / experiment_name)
            )
    return merged


def load_sections(
    config: str | Path | dict[str, Any] | None = None, names: Sequence[str] = INFERENCE_SECTIONS
) -> dict[str, dict[str, Any]]:
    """The sections ``names`` of :func:`load_config` (``pivot infer``/``evaluate``/``preprocess`` read these).

    Only literal values are meaningful outside the bundle parser; ``$``/``@`` expressions stay strings.

    Raises:
        ValueError: a section is not a mapping.
        ConfigKeyError, FileNotFoundError: as :func:`load_config`.
    """
    merged = load_config(config)
    out = {}
    for name in names:
        section = merged.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(
                f"{config or default_config_path()}: section '{name}' must be a mapping, got {type(section).__name__}"
            )
        out[name] = section
    return out


def load_section(name: str, config: str | Path | dict[str, Any] | None = None) -> dict[str, Any]:
    """One section of :func:`load_sections`, e.g. ``load_section("data", "bundle/configs/demo.yaml")``."""
    return load_sections(config, (name,))[name]
