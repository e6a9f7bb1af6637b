"""Build the detector network from the ``model`` section of a PIVOT config.

Example config section (all keys optional)::

    model:
      type: basic_unet_multihead     # or "custom"
      base_filters: 16
      depth: 4
      batch_norm: true
      dropout: 0.0
      activation: leaky_relu
      output_stride: 1
      in_channels: 1
      head_channels: null

    model:
      type: custom
      class: my_package.nets.MyDetector   # any importable torch.nn.Module subclass
      kwargs: {features: [32, 64, 128]}   # passed to the constructor as keyword arguments
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from pivot_monai.networks.detector import PivotDetector

__all__ = ["DEFAULT_MODEL_TYPE", "MODEL_TYPES", "build_network", "count_parameters", "import_class"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_TYPE = "basic_unet_multihead"
MODEL_TYPES: tuple[str, ...] = (DEFAULT_MODEL_TYPE, "custom")
"""Accepted values of ``model.type``."""

_ARCHITECTURE_KEYS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "base_filters": 16,
    "depth": 4,
    "batch_norm": True,
    "dropout": 0.0,
    "activation": "leaky_relu",
    "output_stride": 1,
    "head_channels": None,
    "diameter_scale_mm": 10.0,
}
_CUSTOM_KEYS = ("class", "kwargs")


def build_network(model_cfg: Mapping[str, Any] | None = None, config_key: str = "model") -> nn.Module:
    """Build the network described by a ``model`` config section.

    Args:
        model_cfg: the config section; ``None`` or ``{}`` gives the default :class:`PivotDetector`. Keys:

            - ``type``: ``"basic_unet_multihead"`` (default) or ``"custom"``.
            - for ``basic_unet_multihead``: any :class:`PivotDetector` argument (``base_filters``, ``depth``,
              ``batch_norm``, ``dropout``, ``activation``, ``output_stride``, ``in_channels``, ``spatial_dims``,
              ``head_channels``, ``diameter_scale_mm``).
            - for ``custom``: ``class``, the dotted path of an ``nn.Module`` subclass, and ``kwargs``, a mapping of
              constructor arguments. Architecture keys are not passed to a custom class (put them in ``kwargs``);
              they are reported at INFO level and ignored.
        config_key: name of the section, used in error messages. Defaults to ``"model"``.

    Returns:
        the constructed ``nn.Module`` (in train mode).

    Raises:
        ValueError: on an unknown ``type``, an unknown key, a missing or unimportable ``class``.
        TypeError: if ``class`` is not an ``nn.Module`` subclass or ``kwargs`` is not a mapping.

    Example:
        >>> net = build_network({"base_filters": 8, "depth": 3, "output_stride": 2})
        >>> type(net).__name__
        'PivotDetector'
    """
    cfg = dict(model_cfg or {})
    model_type = cfg.pop("type", DEFAULT_MODEL_TYPE)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{config_key}.type must be one of {list(MODEL_TYPES)}, got {model_type!r}")
    known = set(_ARCHITECTURE_KEYS) | set(_CUSTOM_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{config_key}.{k}' for k in unknown]}; valid keys: {sorted(known)}")

    if model_type == "custom":
        return _build_custom(cfg, config_key)

    ignored = sorted(k for k in _CUSTOM_KEYS if cfg.get(k))
    if ignored:
        raise ValueError(
            f"{[f'{config_key}.{k}' for k in ignored]} only apply to {config_key}.type='custom', "
            f"got {config_key}.type={model_type!r}"
        )
    kwargs = {key: cfg.get(key, default) for key, default in _ARCHITECTURE_KEYS.items()}
    net = PivotDetector(**kwargs)
    logger.info("built PivotDetector(%s) with %d parameters", _format_kwargs(kwargs), count_parameters(net))
    return net


def _build_custom(cfg: dict[str, Any], config_key: str) -> nn.Module:
    path = cfg.get("class")
    if not path or not isinstance(path, str):
        raise ValueError(
            f"{config_key}.class must be a dotted class path when {config_key}.type='custom', got {path!r}"
        )
    kwargs = cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{config_key}.kwargs must be a mapping, got {type(kwargs).__name__}")
    ignored = sorted(k for k in cfg if k in _ARCHITECTURE_KEYS)
    if ignored:
        logger.info(
            "%s.type='custom': ignoring %s (pass constructor arguments in %s.kwargs)", config_key, ignored, config_key
        )
    cls = import_class(path, f"{config_key}.class")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{config_key}.class={path!r} must name a torch.nn.Module subclass, got {cls!r}")
    net = cls(**kwargs)
    logger.info("built custom network %s(%s) with %d parameters", path, _format_kwargs(kwargs), count_parameters(net))
    return net


def import_class(path: str, config_key: str = "class") -> Any:
    """Import an object from a dotted path such as ``"monai.networks.nets.BasicUNet"``.

    Nested attributes are supported (``"package.module.Outer.Inner"``).

    Args:
        path: dotted path: a module path followed by one or more attribute names.
        config_key: config key named in error messages.

    Returns:
        the imported object.

    Raises:
        ValueError: if no prefix of ``path`` is a module, importing that module fails (e.g. a missing dependency; the
            original error is chained) or an attribute is missing.
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue  # this prefix is not a module: try a shorter one
            raise ValueError(f"{config_key}={path!r}: importing {module_name!r} failed: {exc}") from exc
        except ImportError as exc:
            raise ValueError(f"{config_key}={path!r}: importing {module_name!r} failed: {exc}") from exc
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                raise ValueError(f"{config_key}={path!r}: {getattr(obj, '__name__', obj)!r} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ValueError(
        f"{config_key}={path!r} could not be imported: no module found; give 'package.module.ClassName' of an "
        f"installed module or one on PYTHONPATH"
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``. Defaults to False.

    Returns:
        the parameter count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _format_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
