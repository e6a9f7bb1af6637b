"""``prepare_batch`` callables for MONAI's SupervisedTrainer/Evaluator and output transforms for handlers.

The trainer's ``label`` is a dict of target maps, so the loss receives ``(pred dict, target dict)``; the evaluator's
``label`` holds the nodule table and the nodule mask for the validation metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import PrepareBatch
from monai.utils import CommonKeys

from pivot_monai.transforms.targets import TARGET_KEYS

__all__ = ["TARGET_KEYS", "PrepareTrainBatch", "PrepareValBatch", "heatmap_from_output", "image_from_batch"]


def _to(x: Any, device: torch.device | str | None, non_blocking: bool) -> Any:
    return x.to(device=device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x


class PrepareTrainBatch(PrepareBatch):
    """``(image, {heatmap, diameter, malignancy, mask, malignancy_mask})`` from a collated training batch."""

    def __init__(self, target_keys: Sequence[str] = TARGET_KEYS) -> None:
        self.target_keys = tuple(target_keys)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple:
        missing = [k for k in (CommonKeys.IMAGE, *self.target_keys) if k not in batchdata]
        if missing:
            raise KeyError(f"training batch lacks {missing}; the train transforms must end with NoduleTargetsd")
        image = _to(torch.as_tensor(batchdata[CommonKeys.IMAGE]), device, non_blocking)
        targets = {k: _to(torch.as_tensor(batchdata[k]), device, non_blocking) for k in self.target_keys}
        return image, targets, (), kwargs


class PrepareValBatch(PrepareBatch):
    """``(image, {"nodules": (B, M, 7), "mask": (B, 1, ...)})`` from a collated whole-volume validation batch."""

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple:
        image = _to(torch.as_tensor(batchdata[CommonKeys.IMAGE]), device, non_blocking)
        label = {"nodules": torch.as_tensor(batchdata["nodules"])}
        if CommonKeys.LABEL in batchdata:
            label["mask"] = (torch.as_tensor(batchdata[CommonKeys.LABEL]) > 0).float()
        return image, label, (), kwargs


def heatmap_from_output(output: Any) -> torch.Tensor:
    """The predicted heatmap from an engine output (batched dict or decollated list), as (B, 1, ...)."""
    items = output if isinstance(output, list) else [output]
    maps = []
    for item in items:
        pred = item[CommonKeys.PRED]
        heat = pred["heatmap"] if isinstance(pred, Mapping) else pred
        maps.append(heat if heat.dim() == 5 else heat[None])
    return torch.cat(maps).detach().float()


def image_from_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, nodule labels)`` from an engine batch (batched dict or decollated list), each (B, 1, ...)."""
    items = batch if isinstance(batch, list) else [batch]

    def stack(key: str) -> torch.Tensor | None:
        if any(key not in b for b in items):
            return None
        vols = [torch.as_tensor(b[key]) for b in items]
        return torch.cat([v if v.dim() == 5 else v[None] for v in vols]).detach().float()

    return stack(CommonKeys.IMAGE), stack(CommonKeys.LABEL)
