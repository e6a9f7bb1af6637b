"""The training guide's names (``../shared/guide/TRAINING.md``) as an input schema over PIVOT's config.

Users copy the guide's YAML. Where PIVOT's layout differs, :func:`translate` maps the guide's keys onto PIVOT's, in
this one place, before the keys are validated; :func:`~pivot_monai.config.load_config` runs it for every ``pivot``
entry point. The bundle path (``python -m monai.bundle run``) cannot rewrite MONAI's merged config, so there
:mod:`pivot_monai.config.bundle` refuses the guide's names with what to write instead.

=================================================  ==============================================================
guide                                              PIVOT
=================================================  ==============================================================
``model.type: unet``                               ``basic_unet_multihead`` (the BasicUNet-derived detector)
``model.use_batch_norm``                           ``model.batch_norm``
``model.use_dropout`` + ``dropout_rate``           ``model.dropout`` (the rate, or 0 when not used)
``model.in_channels`` / ``out_channels``           must be 1 (CT, the heatmap head); ``type: custom``: ``kwargs``
``training.optimizer: adamw``                      ``training.optimizer: {type: adamw}``
``training.optimizer.learning_rate``               ``training.learning_rate``
``training.lr_scheduler``                          ``training.scheduler``; its ``T_max`` is ``t_max``
``training.loss.type: multi_task``                 PIVOT's loss is always multi-task: the key is dropped
``training.loss.type: focal | dice`` (+ keys)      ``training.loss.detection`` (the heatmap loss)
``training.loss.{detection,regression,triage}``    ``training.loss.multi_task.{detection,regression,
``_weight``                                        classification}``
``training.loss.{detection,regression,triage}``    ``training.loss.{detection,regression,classification}``
``_loss``
``training.gradient_clipping: true``               ``training.gradient_clipping.enabled: true``
``augmentation.random_flip`` / ``random_rotation``  ``augmentation.flip`` / ``rotation`` / ``scaling`` /
/ ``random_scale`` / ``random_noise`` /             ``noise`` / ``elastic``
``elastic_deformation``
``augmentation.*.probability``                     ``augmentation.*.prob``
``augmentation.random_noise.noise_std``            ``augmentation.noise.std`` with ``sample_std: false``
``augmentation.elastic_deformation.alpha/sigma``   ``augmentation.elastic.magnitude_range/sigma_range``
``data.stride``                                    ``inference.overlap = 1 - stride / data.patch_size``
``validation.save_best_metric: froc_score``        ``val_froc`` (``detection_dice`` -> ``val_detection_dice`` ...)
``checkpointing.save_dir``                         ``checkpointing.dir``
=================================================  ==============================================================

``data.annotations``, ``training.scheduler.mode``/``monitor`` and ``logging.wandb.entity``/``tags`` are PIVOT keys
under the guide's own names (``bundle/configs/train.yaml``), so they need no mapping.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GUIDE_AUGMENTATIONS", "guide_names", "translate"]

GUIDE_AUGMENTATIONS = {
    "random_flip": "flip",
    "random_rotation": "rotation",
    "random_scale": "scaling",
    "random_noise": "noise",
    "elastic_deformation": "elastic",
}
"""The guide's augmentation blocks and PIVOT's names for them."""

_LOSS_WEIGHTS = {"detection_weight": "detection", "regression_weight": "regression", "triage_weight": "classification"}
_LOSS_PARTS = {"detection_loss": "detection", "regression_loss": "regression", "triage_loss": "classification"}
_HEATMAP_LOSSES = ("focal", "dice")
_HEATMAP_LOSS_KEYS = ("alpha", "gamma", "smooth", "squared_pred", "batch")
_METRICS = ("froc_score", "detection_dice", "center_accuracy", "size_accuracy", "size_mae", "malignancy_auc")


@dataclass
class _Mapping:
    """What one translation needs: where the config came from, the defaults under it, and the notes made."""

    where: str
    config: dict[str, Any]
    base: Mapping[str, Any]
    notes: list[str] = field(default_factory=list)

    def note(self, guide: str, pivot: str) -> None:
        self.notes.append(f"{guide} -> {pivot}")

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.where}: {message}")

    def value(self, section: str, key: str) -> Any:
        """``section.key`` as the user gave it, else the default under it (``None`` when neither has it)."""
        own = self.config.get(section)
        if isinstance(own, Mapping) and key in own:
            return own[key]
        base = self.base.get(section)
        return base.get(key) if isinstance(base, Mapping) else None


def _rename(section: dict[str, Any], old: str, new: str, m: _Mapping, prefix: str) -> None:
    """``section[old]`` moved to ``section[new]``; both given is an error unless they agree."""
    if old not in section:
        return
    value = section.pop(old)
    if new in section and section[new] != value:
        raise m.error(f"{prefix}.{old} (the guide's name) and {prefix}.{new} are both given and disagree; give one")
    section[new] = value
    m.note(f"{prefix}.{old}", f"{prefix}.{new}")


def _number(value: Any, key: str, m: _Mapping) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-8 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise m.error(f"{key} must be a number, got {value!r}")
    return value


def _model(model: dict[str, Any], m: _Mapping) -> None:
    if model.get("type") == "unet":
        model["type"] = "basic_unet_multihead"
        m.note("model.type: unet", "model.type: basic_unet_multihead")
    _rename(model, "use_batch_norm", "batch_norm", m, "model")
    if "use_dropout" in model or "dropout_rate" in model:
        use, rate = model.pop("use_dropout", True), model.pop("dropout_rate", 0.1)
        if not isinstance(use, bool):
            raise m.error(f"model.use_dropout must be true or false, got {use!r}")
        model["dropout"] = float(_number(rate, "model.dropout_rate", m)) if use else 0.0
        m.note("model.use_dropout/dropout_rate", "model.dropout")
    custom = (model.get("type") or m.value("model", "type")) == "custom"
    for key, why in (("in_channels", "CT scans have one channel"), ("out_channels", "the heatmap head has one")):
        if key not in model:
            continue
        value = model.pop(key)
        if custom:  # the guide's CustomDetector(in_channels=1, out_channels=1): constructor arguments
            kwargs = model.setdefault("kwargs", {})
            if key in kwargs and kwargs[key] != value:
                raise m.error(f"model.{key} and model.kwargs.{key} disagree; give one")
            kwargs[key] = value
            m.note(f"model.{key}", f"model.kwargs.{key}")
        elif value != 1:
            raise m.error(
                f"model.{key} must be 1 ({why}; diameter and malignancy have heads of their own), got {value!r}; "
                "remove the key or set it to 1"
            )
        else:
            m.note(f"model.{key}: 1", "(the default)")


def _optimizer(training: dict[str, Any], m: _Mapping) -> None:
    optimizer = training.get("optimizer")
    if isinstance(optimizer, str):  # the guide's short form, `optimizer: adamw`
        training["optimizer"] = optimizer = {"type": optimizer}
        m.note("training.optimizer: <name>", "training.optimizer.type")
    if not isinstance(optimizer, dict):
        return
    if "learning_rate" in optimizer:
        lr = optimizer.pop("learning_rate")
        if "learning_rate" in training and training["learning_rate"] != lr:
            raise m.error(
                f"training.learning_rate ({training['learning_rate']!r}) and training.optimizer.learning_rate "
                f"({lr!r}) disagree; give one of them"
            )
        training["learning_rate"] = lr
        m.note("training.optimizer.learning_rate", "training.learning_rate")
    if isinstance(optimizer.get("eps"), str):
        optimizer["eps"] = _number(optimizer["eps"], "training.optimizer.eps", m)


def _scheduler(training: dict[str, Any], m: _Mapping) -> None:
    if "lr_scheduler" in training:
        if "scheduler" in training:
            raise m.error("training.lr_scheduler (the guide's name) and training.scheduler are both given; give one")
        training["scheduler"] = training.pop("lr_scheduler")
        m.note("training.lr_scheduler", "training.scheduler")
    scheduler = training.get("scheduler")
    if isinstance(scheduler, dict):
        _rename(scheduler, "T_max", "t_max", m, "training.scheduler")
        for key in ("min_lr", "factor", "gamma"):
            if isinstance(scheduler.get(key), str):
                scheduler[key] = _number(scheduler[key], f"training.scheduler.{key}", m)


def _merge_into(loss: dict[str, Any], key: str, given: Any, m: _Mapping, guide_key: str) -> None:
    if not isinstance(given, Mapping):
        raise m.error(f"training.loss.{guide_key} must be a mapping (type and its settings), got {given!r}")
    part = loss.setdefault(key, {})
    for k, v in given.items():
        if k in part and part[k] != v:
            raise m.error(f"training.loss.{guide_key}.{k} and training.loss.{key}.{k} disagree; give one")
        part[k] = v
    m.note(f"training.loss.{guide_key}", f"training.loss.{key}")


def _loss(loss: dict[str, Any], m: _Mapping) -> None:
    """The guide's loss layouts (Focal, Dice, Multi-Task, the Complete example) onto PIVOT's sections."""
    guide_keys = {"type", *_LOSS_WEIGHTS, *_LOSS_PARTS, *_HEATMAP_LOSS_KEYS}
    if not guide_keys & set(loss):
        return
    kind = loss.pop("type", "multi_task")
    for guide_key, key in _LOSS_WEIGHTS.items():
        if guide_key in loss:
            weight = _number(loss.pop(guide_key), f"training.loss.{guide_key}", m)
            weights = loss.setdefault("multi_task", {})
            if key in weights and weights[key] != weight:
                raise m.error(f"training.loss.{guide_key} and training.loss.multi_task.{key} disagree; give one")
            weights[key] = weight
            m.note(f"training.loss.{guide_key}", f"training.loss.multi_task.{key}")
    for guide_key, key in _LOSS_PARTS.items():
        if guide_key in loss:
            _merge_into(loss, key, loss.pop(guide_key), m, guide_key)
    heatmap = {k: loss.pop(k) for k in _HEATMAP_LOSS_KEYS if k in loss}
    if kind == "multi_task":
        m.note("training.loss.type: multi_task", "(PIVOT's loss is always the multi-task loss)")
        if heatmap:
            raise m.error(
                f"training.loss.{sorted(heatmap)[0]} with type multi_task is ambiguous: put the heatmap loss's "
                "settings under training.loss.detection_loss (or training.loss.detection)"
            )
    elif kind in _HEATMAP_LOSSES:
        detection = loss.setdefault("detection", {})
        for k, v in {"type": kind, **heatmap}.items():
            if k in detection and detection[k] != v:
                raise m.error(f"training.loss.{k} ({v!r}) and the detection loss's {k} ({detection[k]!r}) disagree")
            detection[k] = v
        m.note(f"training.loss.type: {kind} (and {', '.join(heatmap) or 'no settings'})", "training.loss.detection")
    else:
        raise m.error(
            f"training.loss.type must be multi_task (the detector's heatmap, size and malignancy heads together) or "
            f"the heatmap loss, {' or '.join(_HEATMAP_LOSSES)}; got {kind!r}. The size and malignancy losses are "
            "set in training.loss.regression_loss and triage_loss"
        )


def _training(training: dict[str, Any], m: _Mapping) -> None:
    _optimizer(training, m)
    _scheduler(training, m)
    if isinstance(training.get("loss"), dict):
        _loss(training["loss"], m)
    clipping = training.get("gradient_clipping")
    if isinstance(clipping, bool):  # the guide's short form, `gradient_clipping: true`
        training["gradient_clipping"] = {"enabled": clipping}
        m.note("training.gradient_clipping: <bool>", "training.gradient_clipping.enabled")
    for name in ("early_stopping", "scheduler"):
        block = training.get(name)
        if isinstance(block, dict):
            _metric_name(block, "monitor", m, f"training.{name}")


def _augmentation(aug: dict[str, Any], m: _Mapping) -> None:
    for guide_key, key in GUIDE_AUGMENTATIONS.items():
        if guide_key in aug:
            if key in aug:
                raise m.error(f"augmentation.{guide_key} (the guide's name) and augmentation.{key} are both given")
            aug[key] = aug.pop(guide_key)
            m.note(f"augmentation.{guide_key}", f"augmentation.{key}")
    for key, block in aug.items():
        if isinstance(block, dict):
            _rename(block, "probability", "prob", m, f"augmentation.{key}")
    noise = aug.get("noise")
    if isinstance(noise, dict) and "noise_std" in noise:
        _rename(noise, "noise_std", "std", m, "augmentation.noise")
        noise.setdefault("sample_std", False)  # the guide's noise has this standard deviation, not up to it
        noise.setdefault("texture_sigma", [0.0, 0.0])  # and is white, MONAI's RandGaussianNoise
    elastic = aug.get("elastic")
    if isinstance(elastic, dict):  # Simard's alpha (offset scale, voxels) and sigma (smoothing) = MONAI's ranges
        for guide_key, key in (("alpha", "magnitude_range"), ("sigma", "sigma_range")):
            if guide_key in elastic:
                value = _number(elastic.pop(guide_key), f"augmentation.elastic_deformation.{guide_key}", m)
                if key in elastic:
                    raise m.error(f"augmentation.elastic.{guide_key} and augmentation.elastic.{key} are both given")
                elastic[key] = [value, value]
                m.note(f"augmentation.elastic.{guide_key}", f"augmentation.elastic.{key}: [{value}, {value}]")


def _data(data: dict[str, Any], m: _Mapping) -> None:
    if "stride" not in data:
        return
    stride, patch = data.pop("stride"), m.value("data", "patch_size")
    if isinstance(stride, int) and not isinstance(stride, bool):
        stride = [stride] * 3
    if not (isinstance(stride, list) and len(stride) == 3 and all(isinstance(s, int) and s > 0 for s in stride)):
        raise m.error(f"data.stride must be 3 positive integers (voxels between inference windows), got {stride!r}")
    if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(p, int) for p in patch)):
        raise m.error(f"data.stride needs data.patch_size as 3 integers to give the window overlap, got {patch!r}")
    if any(s > p for s, p in zip(stride, patch)):
        raise m.error(f"data.stride {stride} must not exceed data.patch_size {patch} (windows would leave gaps)")
    if m.value("inference", "roi_size") is not None:
        raise m.error(
            "data.stride is the step between inference windows of data.patch_size, but inference.roi_size fits "
            "larger windows per volume; give inference.overlap instead, or set inference.roi_size: null"
        )
    overlaps = {round(1.0 - s / p, 9) for s, p in zip(stride, patch)}
    if len(overlaps) > 1:
        raise m.error(
            f"data.stride {stride} with data.patch_size {patch} gives a different overlap per axis; PIVOT's "
            "inference.overlap is one fraction for all axes: give strides in the same ratio, or inference.overlap"
        )
    overlap = overlaps.pop()
    # MONAI's sliding window steps int(roi * (1 - overlap)) voxels: keep that exactly the guide's stride
    if any(int(p * (1.0 - overlap)) != s for s, p in zip(stride, patch)):
        overlap = max(0.0, overlap - 1e-9)
    inference = m.config.setdefault("inference", {})
    if "overlap" in inference and abs(float(inference["overlap"]) - overlap) > 1e-6:
        raise m.error(f"data.stride (overlap {overlap:g}) and inference.overlap ({inference['overlap']}) disagree")
    inference["overlap"] = overlap
    m.note("data.stride", f"inference.overlap: {overlap:g}")


def _metric_name(section: dict[str, Any], key: str, m: _Mapping, prefix: str) -> None:
    """A metric named as in ``validation.metrics`` (``froc_score``) -> the engine's name (``val_froc``)."""
    name = section.get(key)
    if name in _METRICS:
        section[key] = "val_froc" if name == "froc_score" else f"val_{name}"
        m.note(f"{prefix}.{key}: {name}", f"{section[key]}")


def _validation(validation: dict[str, Any], m: _Mapping) -> None:
    _metric_name(validation, "save_best_metric", m, "validation")


def _checkpointing(checkpointing: dict[str, Any], m: _Mapping) -> None:
    _rename(checkpointing, "save_dir", "dir", m, "checkpointing")


_SECTIONS: dict[str, Callable[[dict[str, Any], _Mapping], None]] = {
    "model": _model,
    "training": _training,
    "augmentation": _augmentation,
    "data": _data,
    "validation": _validation,
    "checkpointing": _checkpointing,
}


def translate(
    config: Mapping[str, Any], where: str = "config", base: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``config`` with the training guide's names mapped onto PIVOT's, and a note per mapping made.

    Args:
        config: a user config, nested mappings (``#`` paths already expanded).
        where: the file or source named in errors. Default ``"config"``.
        base: the config under it (the bundle defaults), for keys read across sections (``data.stride`` needs
            ``data.patch_size`` and ``inference.roi_size``). Default: none.

    Returns:
        ``(mapped copy, notes)``; each note reads ``"<guide key> -> <PIVOT key>"``.

    Raises:
        ValueError: a guide key PIVOT cannot honour, or given twice under both names with different values; the
            message says why and what to use instead.

    Example:
        >>> translate({"training": {"lr_scheduler": {"type": "cosine", "T_max": 50}}})[0]["training"]
        {'scheduler': {'type': 'cosine', 't_max': 50}}
    """
    m = _Mapping(where, copy.deepcopy(dict(config)), base or {})
    for name, fn in _SECTIONS.items():
        if isinstance(m.config.get(name), dict):
            fn(m.config[name], m)
    return m.config, m.notes


def guide_names(
    config: Mapping[str, Any], where: str = "config", base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`translate` without the notes: the user config in PIVOT's names."""
    return translate(config, where, base)[0]
