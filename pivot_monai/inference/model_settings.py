"""Inference settings taken from the model itself: what ``pivot infer --checkpoint model.pt`` runs with.

A model written by training describes itself (:mod:`pivot_monai.networks.metadata`): its ``model`` section, its
preprocessing (``data.target_spacing``, ``hu_window``, ``lung_crop``, ``antialias``, ``malignancy_threshold``), its
training patch and its ``inference`` section. :func:`settings_for_model` layers the sections in this order:

1. the bundle defaults (``bundle/configs/train.yaml``);
2. what the model recorded;
3. the keys the user's ``--config`` sets itself (only those: its file, not the defaults merged under it);
4. the command-line flags (``--overlap``, ``--tta``, ...).

The model and preprocessing keys are **binding**: a ``--config`` that sets one of them to another value than the
model recorded is an error naming the keys (the weights only work with what they were trained on). Inference keys
and ``data.patch_size`` (the smallest sliding window) may be changed; the log says so. A model without a
description (a bare ``state_dict`` of an earlier run, a foreign TorchScript file) runs with the config as before.

The bundles (``inference.yaml``, ``evaluate.yaml``) call :func:`bundle_sections`: there the "user's keys" are those
whose value differs from ``train.yaml``'s, e.g. ``--inference#score_threshold 0.0`` or a layered ``demo.yaml``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pivot_monai.data.preprocess import PreprocessConfig
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.networks.metadata import jsonable, read_classifier_state, read_metadata

__all__ = [
    "BINDING_DATA_KEYS",
    "ModelConfigError",
    "bundle_classifier",
    "bundle_sections",
    "check_settings",
    "embedded_classifier",
    "explicit_keys",
    "sections_for_model",
    "settings_for_model",
]

logger = logging.getLogger(__name__)

BINDING_DATA_KEYS = ("target_spacing", "hu_window", "lung_crop", "antialias", "malignancy_threshold")
"""``data`` keys a model's weights depend on (with every ``model`` key)."""
_SECTIONS = ("data", "model", "inference", "device")
_PREPROCESS_FIELDS = {
    "target_spacing": ("target_spacing",),
    "hu_window": ("hu_window",),
    "lung_crop": ("lung_crop", "crop_margin_mm"),
    "antialias": ("antialias",),
    "malignancy_threshold": ("malignancy_threshold",),
}


class ModelConfigError(ValueError):
    """A config that contradicts what a model was trained with; the message names the keys."""


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: jsonable(value)}


def _binding_leaves(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted binding keys of ``sections`` and their values (``lung_crop: false`` read as ``enabled: false``)."""
    out = _flatten(dict(sections.get("model") or {}), "model")
    data = dict(sections.get("data") or {})
    for key in BINDING_DATA_KEYS:
        if key in data:
            value = data[key]
            if key == "lung_crop" and isinstance(value, bool):
                value = {"enabled": value}
            out.update(_flatten(value, f"data.{key}"))
    return out


def contradictions(explicit: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """Binding keys the user set to another value than the model recorded, as ``"data.target_spacing: [1.5, 1.5,
    1.5] (config) vs [2.0, 2.0, 2.0] (model)"``; a key only one side has is not compared."""
    mine, theirs = _binding_leaves(explicit), _binding_leaves(recorded)
    return [f"{k}: {v!r} (config) vs {theirs[k]!r} (model)" for k, v in mine.items() if k in theirs and v != theirs[k]]


def explicit_keys(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys a user config sets itself, as nested sections in PIVOT's names (the guide's names mapped, ``#``
    paths expanded); ``{}`` for ``None``."""
    from pivot_monai.config import expand_paths, guide_names, load_yaml

    if config is None:
        return {}
    where = "config" if isinstance(config, Mapping) else str(config)
    raw = dict(config) if isinstance(config, Mapping) else load_yaml(config)
    return guide_names(expand_paths(raw), where)


def _differences(sections: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``sections`` whose value differs from ``defaults`` (nested mappings compared key by key)."""
    out: dict[str, Any] = {}
    for key, value in sections.items():
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            child = _differences(value, default)
            if child:
                out[key] = child
        elif key not in defaults or jsonable(value) != jsonable(default):
            out[key] = value
    return out


def _layer(
    model: Any, base: Mapping[str, Any], explicit: Mapping[str, Any], meta: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``base`` <- the model's recorded sections <- ``explicit``, after checking the binding keys."""
    from pivot_monai.config import deep_merge

    recorded = dict(meta.get("config") or {})
    clashes = contradictions(explicit, recorded)
    if clashes:
        raise ModelConfigError(
            f"{model} was trained with other settings than the config gives: {'; '.join(clashes)}. The model "
            f"describes itself: drop these keys from the config (or pass a config that matches it)"
        )
    merged = {name: copy.deepcopy(dict(base.get(name) or {})) for name in _SECTIONS}
    merged = deep_merge(merged, {k: v for k, v in recorded.items() if k in _SECTIONS})
    kept = _flatten({s: recorded.get(s) or {} for s in ("data", "inference")}, "")
    mine = _flatten({s: explicit.get(s) or {} for s in ("data", "inference")}, "")
    changed = [f"{k} {kept[k]!r} -> {v!r}" for k, v in mine.items() if k in kept and kept[k] != v]
    merged = deep_merge(merged, {k: v for k, v in explicit.items() if k in _SECTIONS})
    run = meta.get("run_id")
    logger.info(
        "%s describes itself: trained at %s mm%s%s",
        model,
        recorded.get("data", {}).get("target_spacing", "?"),
        f" (run {run})" if run else "",
        f"; the config changes {', '.join(changed)}" if changed else "",
    )
    return merged


def sections_for_model(
    model: Any, config: str | Path | Mapping[str, Any] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The ``data``, ``model``, ``inference`` and ``device`` sections to run ``model`` with, and its description.

    Args:
        model: a model file (``.pt``, ``.ts``, ``.onnx``) or anything else (a network: the config alone decides).
        config: the user's config file or mapping, or ``None``.

    Returns:
        (sections, description or ``None`` for a model without one).

    Raises:
        ModelConfigError: ``config`` sets a binding key to another value than the model recorded.
        ConfigKeyError, FileNotFoundError: as :func:`~pivot_monai.config.load_config`.
    """
    from pivot_monai.config import load_sections

    meta = read_metadata(model) if isinstance(model, (str, Path)) else None
    if (
        isinstance(model, (str, Path))
        and config is None
        and not (meta or {}).get("config", {}).get("data", {}).get("target_spacing")
    ):
        logger.warning(
            "%s does not record its preprocessing (a bare state_dict or an early export): running with the defaults "
            "of train.yaml; pass --config with the settings it was trained with (e.g. bundle/configs/demo.yaml)",
            model,
        )
    if meta is None:
        return load_sections(config), None
    return _layer(model, load_sections(None), explicit_keys(config), meta), meta


def settings_for_model(
    model: Any, config: str | Path | Mapping[str, Any] | None = None, **flags: Any
) -> InferenceSettings:
    """:class:`~pivot_monai.inference.settings.InferenceSettings` for ``model`` (module docstring).

    Args:
        model: the model file (or a network).
        config: the user's ``--config``, or ``None``.
        flags: the keyword arguments of :meth:`InferenceSettings.from_config` (``device``, ``tta``, ``overlap``,
            ``sw_batch_size``, ``amp``).

    Raises:
        ModelConfigError: the config contradicts the model (the message names the keys).

    Example:
        >>> settings = settings_for_model("bundle/models/model.pt", device="cpu")  # doctest: +SKIP
        >>> settings.preprocess.target_spacing  # doctest: +SKIP
        (2.0, 2.0, 2.0)
    """
    sections, _ = sections_for_model(model, config)
    return InferenceSettings.from_config(sections, **flags)


def bundle_sections(checkpoint: str | Path, sections: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The bundles' sections for ``checkpoint``: ``sections`` (train.yaml's, with the command line's and any
    layered file's overrides) as :func:`settings_for_model` layers them over what the model recorded; the keys whose
    value differs from ``train.yaml``'s count as the user's.

    Raises:
        ModelConfigError: an override contradicts the model.
    """
    from pivot_monai.config import load_sections

    given = {name: dict(sections.get(name) or {}) for name in _SECTIONS}
    defaults = load_sections(None)
    defaults["inference"] = {k: v for k, v in defaults["inference"].items() if k != "run"}
    missing = sorted(set(defaults["inference"]) - set(given["inference"]))
    if missing:  # inference.yaml names the section's keys one by one (its `run` entry must not be resolved)
        raise ValueError(f"the bundle's inference settings lack inference.{missing[0]} (all missing: {missing})")
    given["inference"].pop("run", None)
    meta = read_metadata(checkpoint)
    if meta is None:
        return given
    return _layer(checkpoint, defaults, _differences(given, defaults), meta)


def bundle_classifier(checkpoint: str | Path, device: str | torch.device = "cpu", enabled: bool = True) -> Any:
    """The classifier the bundles run, chosen as ``pivot infer`` chooses it: ``fpr.checkpoint`` of
    ``bundle/configs/fpr.yaml``, else ``fpr.pt`` beside ``checkpoint``, else the one inside it; ``None`` when
    ``enabled`` is false or there is none."""
    from pivot_monai.inference.fpr import load_fpr_section, resolve_classifier

    if not enabled:
        return None
    section = load_fpr_section(None)
    found = resolve_classifier(checkpoint, section, None, device=device)
    return found if found is not None else embedded_classifier(checkpoint, section, device)


def check_settings(model: Any, settings: InferenceSettings) -> None:
    """Raise :class:`ModelConfigError` when ``settings`` preprocess differently from what ``model`` recorded.

    Predicting with a model on images prepared otherwise than its training data gives wrong candidates without an
    error; every path that builds a :class:`~pivot_monai.inference.predictor.Predictor` from a model file checks it.
    """
    meta = read_metadata(model) if isinstance(model, (str, Path)) else None
    if meta is None:
        return
    data = dict(meta.get("config", {}).get("data") or {})
    recorded = PreprocessConfig.from_data_section(data).to_dict()
    given = settings.preprocess.to_dict()
    names = [f for key in BINDING_DATA_KEYS if key in data for f in _PREPROCESS_FIELDS[key]]
    clashes = [f"{n}: {given[n]!r} (settings) vs {recorded[n]!r} (model)" for n in names if given[n] != recorded[n]]
    if clashes:
        raise ModelConfigError(
            f"{model} was trained on other preprocessing than these settings: {'; '.join(clashes)}; build them with "
            f"pivot_monai.inference.model_settings.settings_for_model({str(model)!r}, config)"
        )


def embedded_classifier(
    model: Any, fpr_section: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"
) -> Any:
    """The false-positive-reduction classifier embedded in ``model`` (an export step puts ``fpr.pt`` inside), as a
    :class:`~pivot_monai.inference.fpr.CandidateClassifier`; ``None`` when there is none or ``fpr.enabled`` is
    false. The section's ``fusion_weight`` overrides the embedded one, as for ``fpr.pt`` files."""
    from pivot_monai.inference.fpr import CandidateClassifier, FPRSettings
    from pivot_monai.networks.classifier import MultiScaleClassifier

    section = dict(fpr_section or {})
    if not isinstance(model, (str, Path)) or not section.get("enabled", True):
        return None
    state = read_classifier_state(model)
    if state is None:
        return None
    network = MultiScaleClassifier(**dict(state["network"]))
    network.load_state_dict(state["model"])
    patches = state["patches"]
    weight = section.get("fusion_weight", state.get("fusion_weight", 0.25))
    classifier = CandidateClassifier(
        network, patches["fov_mm"], int(patches["grid"]), float(FPRSettings(fusion_weight=weight).fusion_weight),
        device, detector=state.get("detector"),
    )  # fmt: skip
    classifier.path = Path(model)
    logger.info(
        "false-positive reduction: the classifier inside %s (fusion weight %.2f)", model, classifier.fusion_weight
    )
    return classifier
