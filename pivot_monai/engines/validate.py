"""Type and range checks of a training config before MONAI evaluates any ``$`` expression.

MONAI resolves a config lazily: a bad literal (``epochs: "ten"``, a patch of 18 with ``model.depth`` 4) only fails
deep inside the expression that uses it, as "Failed to evaluate ConfigExpression", or not at all (``epochs: 2.5``
ran 3 epochs; ``warmup_epochs: 5`` with ``epochs: 2`` was accepted). :func:`validate_training_config` checks the
literal values of the merged (unparsed) config first and raises one ``ValueError``/``TypeError`` naming the key,
what was expected, what arrived and how to fix it. Values that are ``$``/``@`` expressions are left to MONAI.

:func:`reject_expressions` is for configs that come from a client (the API): there a ``$`` value is code and is
refused outright. :func:`check_annotations` checks the processed scans against ``data.annotations``.

Nothing here imports MONAI or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pivot_monai.config import walk_keys

__all__ = [
    "ConfigValueError",
    "check_annotations",
    "check_preprocessing",
    "check_literal_types",
    "reject_expressions",
    "validate_training_config",
]

logger = logging.getLogger(__name__)

_MISSING = object()
_ACTIVATIONS = ("relu", "leaky_relu", "elu")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCHEDULERS = ("cosine", "step", "plateau", "none")
_OUTPUT_STRIDES = (1, 2, 4)


class ConfigValueError(ValueError):
    """A config value of the wrong type or out of range; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _get(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith(("$", "@", "%"))


def _fail(key: str, expected: str, value: Any, fix: str) -> ConfigValueError:
    return ConfigValueError(key, f"{key} must be {expected}, got {value!r} ({type(value).__name__}); {fix}")


def _literal(config: Mapping[str, Any], key: str) -> Any:
    value = _get(config, key)
    return _MISSING if value is _MISSING or _is_expression(value) else value


def _integer(config: Mapping[str, Any], key: str, low: int, fix: str, high: int | None = None) -> int | None:
    value = _literal(config, key)
    if value is _MISSING or value is None:
        return None
    expected = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, expected, value, fix)
    if value < low or (high is not None and value > high):
        raise _fail(key, expected, value, fix)
    return value


def _number(config: Mapping[str, Any], key: str, check: Any, expected: str, fix: str) -> float | None:
    value = _literal(config, key)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not check(float(value)):
        raise _fail(key, expected, value, fix)
    return float(value)


def _choice(config: Mapping[str, Any], key: str, choices: Sequence[str]) -> str | None:
    value = _literal(config, key)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise _fail(key, f"one of {list(choices)}", value, f"e.g. {key.rsplit('.', 1)[-1]}: {choices[0]}")
    return value.lower()


def _patch(config: Mapping[str, Any], key: str, divisor: int | None, depth: int | None) -> list[int] | None:
    value = _literal(config, key)
    if value is _MISSING or value is None:
        return None
    example = [64, 64, 64] if not divisor else [max(divisor, 64 // divisor * divisor)] * 3
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise _fail(key, "3 positive integers (x, y, z voxels)", value, f"e.g. {key.rsplit('.', 1)[-1]}: {example}")
    if divisor and any(v % divisor for v in value):
        fixed = [max(divisor, round(v / divisor) * divisor) for v in value]
        raise ConfigValueError(
            key,
            f"{key} {list(value)} must be divisible by 2 ** model.depth = {divisor} (model.depth={depth}); "
            f"got remainders {[v % divisor for v in value]}; use e.g. {fixed}",
        )
    return list(value)


def _kind(config: Mapping[str, Any], key: str, types: tuple[type, ...], expected: str, fix: str) -> Any:
    """A literal of one of ``types`` (or ``None``); bools are not numbers here."""
    value = _literal(config, key)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise _fail(key, expected, value, fix)
    return value


def _guide_keys(config: Mapping[str, Any]) -> None:
    """The keys PIVOT took from the guide under its own names: scheduler t_max/mode/monitor, wandb, annotations."""
    t_max = _integer(config, "training.scheduler.t_max", 1, "e.g. training.scheduler.t_max: 100 (null: epochs)")
    warmup = _literal(config, "training.scheduler.warmup_epochs")
    if t_max is not None and isinstance(warmup, int) and warmup >= t_max:
        raise ConfigValueError(
            "training.scheduler.t_max",
            f"training.scheduler.t_max ({t_max}) must be larger than training.scheduler.warmup_epochs ({warmup}): the "
            "cosine decays over the epochs after the warm-up; raise t_max or lower warmup_epochs",
        )
    _choice(config, "training.scheduler.mode", ("max", "min"))
    _kind(config, "training.scheduler.monitor", (str,), "a validation metric name", "e.g. monitor: val_froc")
    _kind(config, "augmentation.noise.sample_std", (bool,), "true or false", "e.g. sample_std: false")
    _kind(config, "logging.wandb.entity", (str,), "a wandb team or user name", "e.g. entity: your-team")
    tags = _literal(config, "logging.wandb.tags")
    if tags is not _MISSING and tags is not None:
        if isinstance(tags, str) or not isinstance(tags, Sequence) or not all(isinstance(t, str) for t in tags):
            raise _fail("logging.wandb.tags", "a list of strings", tags, "e.g. tags: [unet, focal-loss, aug]")
    _kind(
        config, "data.annotations", (str,), "the path of an annotations CSV", "e.g. annotations: data/annotations.csv"
    )


def validate_training_config(config: Mapping[str, Any]) -> None:
    """Check the literal values of a merged training config (bundle ``train.yaml`` layout).

    Checked: ``training.epochs`` (integer >= 1), ``training.batch_size`` (>= 1), ``training.learning_rate`` (> 0),
    ``training.accumulation_steps`` (>= 1), ``training.scheduler.warmup_epochs`` (integer >= 0; not below ``epochs``
    for the cosine schedule is a warning, as the schedule shortens it to ``epochs - 1``), ``training.optimizer.type``,
    ``training.scheduler.type``, ``data.patch_size`` (3 positive integers divisible by ``2 ** model.depth``),
    ``data.samples_per_volume``, ``data.positive_sampling``, ``data.positive_contrast_hu`` (> 0),
    ``data.num_workers``, ``model.depth`` (1-6), ``model.base_filters``,
    ``model.dropout`` ([0, 1)), ``model.activation``, ``model.output_stride`` (1, 2, 4, below ``2 ** depth``),
    ``validation.interval``, ``checkpointing.save_interval`` and ``keep_last_n``; and the keys named as in the
    training guide: ``training.scheduler.t_max`` (integer above ``warmup_epochs``), ``mode`` (max/min) and
    ``monitor``, ``augmentation.noise.sample_std``, ``logging.wandb.entity`` and ``tags``, ``data.annotations``.

    Raises:
        ConfigValueError: (a ``ValueError``) the first bad value, naming its key, what was expected, what arrived and
            a fix.
    """
    epochs = _integer(config, "training.epochs", 1, "e.g. training.epochs: 100 (a whole number of epochs)")
    _integer(config, "training.batch_size", 1, "e.g. training.batch_size: 2")
    _integer(config, "training.accumulation_steps", 1, "e.g. training.accumulation_steps: 1")
    _number(
        config,
        "training.learning_rate",
        lambda v: 0 < v < 10,
        "a number > 0 (and < 10)",
        "e.g. training.learning_rate: 0.001 (YAML reads 1e-3 as a string; write 1.0e-3)",
    )
    _choice(config, "training.optimizer.type", _OPTIMIZERS)
    scheduler = _choice(config, "training.scheduler.type", _SCHEDULERS)
    warmup = _integer(config, "training.scheduler.warmup_epochs", 0, "e.g. training.scheduler.warmup_epochs: 5")
    if scheduler in (None, "cosine") and epochs is not None and warmup is not None and warmup >= epochs:
        # not an error: the defaults (5 warm-up epochs) with a short run are common; the schedule shortens it
        logger.warning(
            "training.scheduler.warmup_epochs (%d) is not smaller than training.epochs (%d): the warm-up is shortened "
            "to %d epoch(s); set warmup_epochs below epochs to choose it",
            warmup,
            epochs,
            max(epochs - 1, 0),
        )
    depth = _integer(config, "model.depth", 1, "e.g. model.depth: 4", high=6)
    _integer(config, "model.base_filters", 1, "e.g. model.base_filters: 16")
    _number(config, "model.dropout", lambda v: 0 <= v < 1, "a number in [0, 1)", "e.g. model.dropout: 0.1")
    _choice(config, "model.activation", _ACTIVATIONS)
    stride = _literal(config, "model.output_stride")
    if stride is not _MISSING and stride is not None:
        if isinstance(stride, bool) or stride not in _OUTPUT_STRIDES:
            raise _fail("model.output_stride", f"one of {list(_OUTPUT_STRIDES)}", stride, "e.g. model.output_stride: 1")
        if depth is not None and stride >= 2**depth:
            raise ConfigValueError(
                "model.output_stride",
                f"model.output_stride must be smaller than 2 ** model.depth = {2**depth}, got {stride}; lower it or "
                "raise model.depth",
            )
    _patch(config, "data.patch_size", 2**depth if depth else None, depth)
    _integer(config, "data.samples_per_volume", 1, "e.g. data.samples_per_volume: 4")
    from pivot_monai.transforms.sampling import POSITIVE_SAMPLING  # the sampler's own list (imports MONAI)

    _choice(config, "data.positive_sampling", POSITIVE_SAMPLING)
    _number(
        config,
        "data.positive_contrast_hu",
        lambda v: v > 0,
        "a number of HU > 0",
        "e.g. data.positive_contrast_hu: 500",
    )
    _integer(config, "data.num_workers", 0, "e.g. data.num_workers: 2")
    _integer(config, "validation.interval", 1, "e.g. validation.interval: 1")
    _integer(config, "checkpointing.save_interval", 0, "e.g. checkpointing.save_interval: 5 (0: none)")
    _integer(config, "checkpointing.keep_last_n", 0, "e.g. checkpointing.keep_last_n: 3")
    _guide_keys(config)


def check_literal_types(
    config: Mapping[str, Any], defaults: Mapping[str, Any], skip: frozenset[str] = frozenset()
) -> None:
    """Each literal value of ``config`` has the kind of its default: a flag is ``true``/``false``, a number a number.

    The bundle command reads ``--device#reuse_freed_memory false`` as the text ``'false'`` (Python Fire parses
    Python literals: ``False`` is a bool, ``false`` a string), and a non-empty string is truthy, so the flag would
    silently stay on. Defaults that are ``null``, strings, lists or expressions say nothing about the kind and are
    not checked; nor are ``$``/``@`` values, ``skip`` paths, or sections replaced by another ``_target_``.

    Args:
        config: the merged (unparsed) config.
        defaults: ``train.yaml`` (the reference for each key's kind).
        skip: dotted paths of free-form sections.

    Raises:
        ConfigValueError: the first flag that is not a bool or number that is not a number, naming its key and the
            command-line spelling.
    """
    for path, key, value, section in walk_keys(config, defaults, skip):
        if key not in section or _is_expression(value):
            continue
        default = section[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise _fail(
                path,
                "true or false",
                value,
                f"write {path}: true (or false) in YAML; on the bundle command line write "
                f"--{path.replace('.', '#')} True (or False): it reads lower-case true/false as text",
            )
        elif (
            isinstance(default, (int, float))
            and not isinstance(default, bool)
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, (int, float)))
        ):
            raise _fail(path, "a number", value, f"e.g. {path}: {default}")


def _nodule_keys(nodules: Any) -> list[tuple[float, ...]]:
    """Sorted (x, y, z, diameter) of findings, to a micrometre: how the CSV and ``meta.json`` are compared."""
    return sorted(tuple(round(float(v), 3) for v in (*n["world"], n["diameter_mm"])) for n in nodules)


def check_annotations(annotations: str | None, *datalists: Sequence[Mapping[str, Any]]) -> None:
    """Check that the processed scans of ``datalists`` hold the nodules of the annotations CSV ``data.annotations``.

    Preprocessing writes each scan's nodules (and its label volume) from an annotations CSV. ``data.annotations``
    names that CSV; a training run on scans made from another (or an older) file would learn other targets, so
    every listed scan's ``meta.json`` nodules must be the CSV's rows for its seriesuid, except rows whose centre lies
    outside the raw image (preprocessing skips those with a warning).

    Args:
        annotations: ``data.annotations``; ``None`` checks nothing.
        datalists: items with a ``meta`` path (``train#datalist``, ``validate#datalist``).

    Raises:
        FileNotFoundError: the CSV does not exist (the message names ``data.annotations``).
        ConfigValueError: a scan whose nodules differ, naming it, the counts and how to fix it.
    """
    if annotations is None:
        return
    import json
    from pathlib import Path

    import numpy as np

    from pivot_monai.data.annotations import read_annotations
    from pivot_monai.data.geometry import Geometry

    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"data.annotations: {path} not found; give the annotations CSV or set it to null")
    table = read_annotations(path)
    for item in (i for items in datalists for i in items):
        meta = json.loads(Path(item["meta"]).read_text())
        uid, raw = meta["seriesuid"], Geometry.from_dict(meta["raw_geometry"])
        rows = [
            {"world": n.world, "diameter_mm": n.diameter_mm}
            for n in table.get(uid, [])
            if raw.contains_index(raw.world_to_index(np.asarray(n.world)))[0]
        ]
        if _nodule_keys(rows) != _nodule_keys(meta.get("nodules", [])):
            raise ConfigValueError(
                "data.annotations",
                f"data.annotations: {path} lists {len(rows)} nodule(s) for {uid} inside its image and the processed "
                f"scan {Path(item['meta']).parent} holds {len(meta.get('nodules', []))}, not the same ones: it was "
                "preprocessed from another annotations file. Re-run `pivot preprocess --config <this file> "
                "--overwrite`, or set data.annotations to the CSV the scans were made from",
            )
    logger.info("data.annotations: %s matches the nodules of the processed scans", path)


def check_preprocessing(data: Mapping[str, Any], *datalists: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warn when the processed scans were made with another ``data.target_spacing`` or ``data.hu_window``.

    Training reads both keys as facts about its scans: the heatmap targets are sized in mm at ``target_spacing``, and
    ``model.pt`` records them as the preprocessing ``pivot infer`` applies. Scans preprocessed at 1.25 mm under a
    config saying 1.5 mm would train a model that infers on rescaled scans. Each scan's ``meta.json`` records the
    settings it was made with (``preprocess_config``; scans without one are not checked).

    Args:
        data: the resolved ``data`` section.
        datalists: items with a ``meta`` path (``train#datalist``, ``validate#datalist``).

    Returns:
        One line per differing scan (empty when all match); the first few are logged as one warning.
    """
    import json
    from pathlib import Path

    from pivot_monai.data.preprocess import PreprocessConfig

    want = PreprocessConfig.from_data_section(dict(data)).to_dict()
    keys = {"target_spacing": "data.target_spacing", "hu_window": "data.hu_window"}
    lines = []
    for item in (i for items in datalists for i in items):
        made = json.loads(Path(item["meta"]).read_text()).get("preprocess_config")
        if not made:
            continue
        diff = [
            f"{name} {made.get(key)} (config: {want[key]})"
            for key, name in keys.items()
            if made.get(key) != want[key]  # both PreprocessConfig.to_dict() values: lists of floats
        ]
        if diff:
            lines.append(f"{Path(item['meta']).parent}: made with " + ", ".join(diff))
    if lines:
        logger.warning(
            "%d processed scan(s) were made with other preprocessing than this config: %s%s. Re-run `pivot "
            "preprocess --config <this config> --overwrite` into the dataset, or set the keys to the values the scans "
            "were made with",
            len(lines),
            "; ".join(lines[:3]),
            " ..." if len(lines) > 3 else "",
        )
    return lines


def reject_expressions(config: Any, source: str = "config", _path: str = "") -> None:
    """Refuse ``$``/``@``/``%`` values anywhere in ``config`` (a client-supplied config: a ``$`` value is code).

    Raises:
        ConfigValueError: naming the first key holding an expression.
    """
    if isinstance(config, Mapping):
        for key, value in config.items():
            reject_expressions(value, source, f"{_path}.{key}" if _path else str(key))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            reject_expressions(value, source, f"{_path}[{i}]")
    elif _is_expression(config):
        raise ConfigValueError(
            _path,
            f"{source}: {_path} holds the expression {config!r}; values starting with $, @ or % are evaluated as "
            "code or references by MONAI and are not accepted here; give a plain value",
        )
