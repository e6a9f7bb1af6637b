"""Test-time augmentation (TTA) as pure, exactly invertible tensor maths.

An augmentation is named by its elementary operations joined with ``+`` and applied left to right, e.g.
``"flip_x+rotate_90"``; ``"identity"`` does nothing. The elementary operations act on the last three (spatial)
dimensions ``(X, Y, Z)`` of a ``(..., X, Y, Z)`` tensor:

* ``flip_x``, ``flip_y``, ``flip_z``: reverse one axis (its own inverse);
* ``rotate_90``: rotate a quarter turn in the axial ``(x, y)`` plane (inverse: a quarter turn back).

:func:`invert` undoes :func:`augment` exactly (``invert(augment(t, n), n) == t`` bit for bit), so network outputs
predicted on an augmented input can be mapped back onto the input grid and averaged. For maps at ``1/s`` of the
input resolution this is exact when every input size is a multiple of ``s`` (the predictor pads to ensure it).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["IDENTITY", "TTA_TYPES", "TTASettings", "augment", "augmentation_names", "invert", "parse_name"]

IDENTITY = "identity"
TTA_TYPES: tuple[str, ...] = ("flip_x", "flip_y", "flip_z", "rotate_90")
"""Elementary augmentations accepted in ``inference.tta.types``."""
_FLIP_DIMS = {"flip_x": -3, "flip_y": -2, "flip_z": -1}
_MAX_AUGMENTATIONS = 8


def parse_name(name: str) -> tuple[str, ...]:
    """Elementary operations of an augmentation name (``"flip_x+flip_z"`` -> ``("flip_x", "flip_z")``).

    Raises:
        ValueError: an unknown operation; the message lists the valid ones.
    """
    ops = tuple(op.strip() for op in str(name).split("+") if op.strip() and op.strip() != IDENTITY)
    unknown = [op for op in ops if op not in TTA_TYPES]
    if unknown:
        raise ValueError(f"unknown TTA operation(s) {unknown} in {name!r}; valid: {list(TTA_TYPES)} joined by '+'")
    return ops


def _apply(x: torch.Tensor, op: str, inverse: bool) -> torch.Tensor:
    if op in _FLIP_DIMS:
        return torch.flip(x, dims=(_FLIP_DIMS[op],))
    return torch.rot90(x, k=-1 if inverse else 1, dims=(-3, -2))


def _check_dims(x: torch.Tensor) -> None:
    if x.dim() < 3:
        raise ValueError(f"TTA needs a tensor with 3 spatial dims (..., X, Y, Z), got shape {list(x.shape)}")


def augment(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the augmentation ``name`` to the spatial dims of ``x``.

    Args:
        x: (..., X, Y, Z) tensor, e.g. a (B, C, X, Y, Z) image.
        name: ``"identity"`` or elementary operations joined by ``+`` (see :data:`TTA_TYPES`).

    Returns:
        The augmented tensor; ``(..., Y, X, Z)`` after an odd number of ``rotate_90``.

    Example:
        >>> t = torch.arange(8.0).reshape(2, 2, 2)
        >>> torch.equal(invert(augment(t, "flip_x+rotate_90"), "flip_x+rotate_90"), t)
        True
    """
    _check_dims(x)
    for op in parse_name(name):
        x = _apply(x, op, inverse=False)
    return x


def invert(y: torch.Tensor, name: str) -> torch.Tensor:
    """Undo :func:`augment` on ``y`` (an augmented input, or a dense output predicted from one).

    Args:
        y: (..., X', Y', Z') tensor on the augmented grid.
        name: the augmentation that produced it.

    Returns:
        ``y`` mapped back onto the original grid (operations undone in reverse order).
    """
    _check_dims(y)
    for op in reversed(parse_name(name)):
        y = _apply(y, op, inverse=True)
    return y


def augmentation_names(types: Sequence[str] = ("flip_x", "flip_y", "flip_z"), num_augmentations: int = 8) -> list[str]:
    """The first ``num_augmentations`` combinations of ``types``: identity, then singles, pairs, triples, ...

    Args:
        types: elementary operations to combine (subset of :data:`TTA_TYPES`). Defaults to the three flips.
        num_augmentations: how many to return, 1 to 8, identity included. Defaults to 8 (identity and all flip
            combinations for three flips).

    Returns:
        Augmentation names, ``"identity"`` first.

    Raises:
        ValueError: unknown or repeated types, or ``num_augmentations`` outside 1..8.
    """
    types = [str(t) for t in types]
    parse_name("+".join(types))
    if len(set(types)) != len(types):
        raise ValueError(f"inference.tta.types has repeated entries: {types}")
    if not 1 <= int(num_augmentations) <= _MAX_AUGMENTATIONS:
        raise ValueError(
            f"inference.tta.num_augmentations must be in 1..{_MAX_AUGMENTATIONS} (identity included), "
            f"got {num_augmentations}"
        )
    names = [IDENTITY]
    for r in range(1, len(types) + 1):
        names += ["+".join(c) for c in itertools.combinations(types, r)]
    return names[: int(num_augmentations)]


@dataclass
class TTASettings:
    """TTA settings (``inference.tta`` of the config).

    Args:
        enabled: run TTA. Default False.
        types: elementary operations to combine. Default the three flips.
        num_augmentations: passes per scan, identity included, 1..8. Default 8.
    """

    enabled: bool = False
    types: tuple[str, ...] = ("flip_x", "flip_y", "flip_z")
    num_augmentations: int = _MAX_AUGMENTATIONS

    def __post_init__(self) -> None:
        self.types = tuple(self.types)
        augmentation_names(self.types, self.num_augmentations)  # validates

    @property
    def names(self) -> list[str]:
        """Augmentations to run: ``["identity"]`` when disabled."""
        return augmentation_names(self.types, self.num_augmentations) if self.enabled else [IDENTITY]

    @classmethod
    def from_config(cls, tta: Mapping[str, Any] | bool | None, enabled: bool | None = None) -> TTASettings:
        """From ``inference.tta`` (a mapping, a bool or ``None``); ``enabled`` overrides the config (``--tta``)."""
        if isinstance(tta, TTASettings):
            cfg = {"enabled": tta.enabled, "types": tta.types, "num_augmentations": tta.num_augmentations}
        elif isinstance(tta, Mapping):
            unknown = sorted(set(tta) - {"enabled", "augmentation_types", "num_augmentations"})
            if unknown:
                raise ValueError(
                    f"unknown key(s) {[f'inference.tta.{k}' for k in unknown]}; "
                    f"valid: enabled, augmentation_types, num_augmentations"
                )
            cfg = dict(tta)
            if "augmentation_types" in cfg:
                cfg["types"] = cfg.pop("augmentation_types")
        elif tta is None or isinstance(tta, bool):
            cfg = {"enabled": bool(tta)}
        else:
            raise TypeError(f"inference.tta must be a mapping or a bool, got {type(tta).__name__}")
        if enabled is not None:
            cfg["enabled"] = bool(enabled)
        return cls(**cfg)
