"""Validation-metric handlers and small wiring helpers used by the bundle config."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.handlers import IgniteMetricHandler

from pivot_monai.metrics.cumulative import METRIC_NAMES, DetectionMetric, FROCCache
from pivot_monai.transforms.nodules import NODULE
from pivot_monai.transforms.targets import TARGET_KEYS, NoduleTargetsd

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "ValidationLossHandler",
    "attach_optional",
    "build_validation_metrics",
    "close_writer",
    "detection_output_transform",
    "make_summary_writer",
    "metric_score",
]

logger = logging.getLogger(__name__)


def detection_output_transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(candidate tables, nodule tables + scan-stats row)`` from a decollated evaluator output."""
    items = output if isinstance(output, list) else [output]
    y_pred = [item["candidates"] for item in items]
    y = [torch.cat([torch.as_tensor(item["label"]["nodules"]).float().cpu(), item["scan_stats"]]) for item in items]
    return y_pred, y


def build_validation_metrics(
    names: Sequence[str], key_metric: str = "val_froc", threshold: float = 0.5
) -> tuple[dict[str, IgniteMetricHandler], dict[str, IgniteMetricHandler]]:
    """``(key_val_metric, additional_metrics)`` for the evaluator from ``validation.metrics``.

    Engine metric names are ``val_<name>``, except ``froc_score`` which is ``val_froc``. ``key_metric``
    (``validation.save_best_metric``) selects the key metric used for best-checkpoint saving.

    Raises:
        ValueError: unknown metric name, or ``key_metric`` not among the configured metrics.
    """
    handlers = {}
    froc_cache = FROCCache()  # the metrics of one round match the same candidates: once
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"validation.metrics: unknown metric {name!r}; valid: {list(METRIC_NAMES)}")
        engine_name = "val_froc" if name == "froc_score" else f"val_{name}"
        handlers[engine_name] = IgniteMetricHandler(
            metric_fn=DetectionMetric(name, threshold=threshold, froc_cache=froc_cache),
            output_transform=detection_output_transform,
            save_details=False,
        )
    if key_metric not in handlers:
        raise ValueError(
            f"validation.save_best_metric={key_metric!r} is not computed; computed: {sorted(handlers)} "
            f"(add its name to validation.metrics)"
        )
    key = {key_metric: handlers.pop(key_metric)}
    return key, handlers


def metric_score(name: str, mode: str = "max") -> Callable[[Any], float]:
    """Score function for early stopping: the engine metric ``name``, negated when ``mode`` is ``min``."""
    if mode not in ("max", "min"):
        raise ValueError(f"training.early_stopping.mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0

    def score(engine: Any) -> float:
        if name not in engine.state.metrics:
            raise KeyError(
                f"training.early_stopping.monitor={name!r} is not a validation metric; available: "
                f"{sorted(engine.state.metrics)}"
            )
        return sign * float(engine.state.metrics[name])

    return score


def attach_optional(engine: Any, handler: Any, trainer: Any = None, evaluator: Any = None) -> None:
    """Attach ``handler`` unless it was disabled in the config (``_disabled_`` resolves it to ``None``).

    ``trainer`` is given to handlers that stop training from the evaluator (``set_trainer``); ``evaluator`` to
    handlers that log both engines.
    """
    if handler is None:
        return
    if trainer is not None and hasattr(handler, "set_trainer"):
        handler.set_trainer(trainer)
    if evaluator is not None:
        handler.attach(engine, evaluator)
    else:
        handler.attach(engine)


def make_summary_writer(log_dir: str | Path, enabled: bool = True) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (``None`` when disabled or on a non-zero DDP rank)."""
    import torch.distributed as dist

    if not enabled or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return None
    from torch.utils.tensorboard import SummaryWriter

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir))


def close_writer(writer: Any) -> None:
    """Flush and close a summary writer (no-op for ``None``)."""
    if writer is not None:
        writer.flush()
        writer.close()


_COMPONENTS = ("total", "detection", "regression", "classification")
"""The entries of ``MultiTaskDetectionLoss.last_components`` that the validation loss averages."""


class ValidationLossHandler:
    """The multi-task loss of every validation scan, averaged into ``engine.state.metrics`` once per round.

    The evaluator runs the network in eval mode over whole volumes, so the loss is computed on what it returns: the
    heatmap and malignancy probabilities are turned back into logits (clamped to ``[eps, 1 - eps]``, so a saturated
    voxel costs at most what a logit of ``log((1 - eps) / eps)`` ~ 13.8 does) and the diameter is used as is. The
    targets are made from the scan's instance label and nodule table as the training targets are
    (:class:`~pivot_monai.transforms.targets.NoduleTargetsd`, without augmentation), zero-padded at the far end to a
    multiple of ``output_stride``. Each component is the mean over the round's scans (a scan without nodules adds 0
    to the diameter and malignancy terms, as a nodule-free patch does in training), gathered over DDP ranks.

    Metrics, after each round: ``val_loss`` (the weighted total), ``val_loss_detection``, ``val_loss_regression`` and
    ``val_loss_classification``. List it before the handlers that log or monitor them (``validate#handlers``).

    Args:
        loss_fn: a :class:`~pivot_monai.losses.MultiTaskDetectionLoss` (its own instance: ``last_components`` is read).
        spacing: processed voxel size in mm (``data.target_spacing``). Default (1.5, 1.5, 1.5).
        sigma_scale: heatmap sigma as a fraction of the radius (``data.heatmap.sigma_scale``). Default 0.5.
        min_sigma_voxels: smallest heatmap sigma in voxels (``data.heatmap.min_sigma_voxels``). Default 1.0.
        output_stride: the network's output stride (``model.output_stride``). Default 1.
        eps: probability clamp of the logit inversion. Default 1e-6.
        prefix: metric name prefix. Default ``"val_loss"``.

    Raises:
        ValueError: ``output_stride`` < 1 or ``eps`` outside (0, 0.5).
    """

    def __init__(
        self,
        loss_fn: Any,
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        sigma_scale: float = 0.5,
        min_sigma_voxels: float = 1.0,
        output_stride: int = 1,
        eps: float = 1e-6,
        prefix: str = "val_loss",
    ) -> None:
        if int(output_stride) < 1:
            raise ValueError(f"model.output_stride must be >= 1, got {output_stride}")
        if not 0.0 < float(eps) < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.loss_fn, self.stride, self.eps, self.prefix = loss_fn, int(output_stride), float(eps), prefix
        self.targets = NoduleTargetsd(
            label_key="label", spacing=spacing, sigma_scale=sigma_scale, min_sigma_vox=min_sigma_voxels
        )
        self.sums: dict[str, float] = dict.fromkeys(_COMPONENTS, 0.0)
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.sums, self.count = dict.fromkeys(_COMPONENTS, 0.0), 0

    def __call__(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        batch = batch if isinstance(batch, list) else [batch]
        output = output if isinstance(output, list) else [output]
        with torch.no_grad():
            for item, out in zip(batch, output):
                components = self.scan_loss(out["pred"], item["label"], item["nodules"])
                for name in _COMPONENTS:
                    self.sums[name] += components[name]
                self.count += 1

    def scan_loss(self, pred: Mapping[str, torch.Tensor], label: Any, nodules: Any) -> dict[str, float]:
        """The loss components of one scan.

        Args:
            pred: eval-mode outputs of one scan, each (1, X/s, Y/s, Z/s): ``heatmap`` and ``malignancy``
                probabilities, ``diameter`` in mm.
            label: (1, X, Y, Z) instance label (nodule ``label_id`` per voxel).
            nodules: (M, 7) nodule table (:func:`~pivot_monai.transforms.nodules.nodule_table`).

        Returns:
            ``{"detection", "regression", "classification", "total"}`` as floats.
        """
        heat = torch.as_tensor(pred["heatmap"])
        logits = {"heatmap": self._logit(heat)}
        if "diameter" in pred:
            logits["diameter"] = torch.as_tensor(pred["diameter"])[None].float()
        if "malignancy" in pred:
            logits["malignancy"] = self._logit(torch.as_tensor(pred["malignancy"]))
        targets = self._scan_targets(label, nodules, heat.shape[1:], heat.device)
        self.loss_fn(logits, targets)
        return {name: float(value) for name, value in self.loss_fn.last_components.items()}

    def epoch_completed(self, engine: Engine) -> None:
        import ignite.distributed as idist

        # every rank reduces the same components, a rank without validation scans included
        totals = torch.tensor([float(self.count)] + [self.sums[n] for n in _COMPONENTS], dtype=torch.float64)
        if idist.get_world_size() > 1:
            totals = idist.all_reduce(totals)
        count = float(totals[0])
        if count == 0:
            return
        for name, value in zip(_COMPONENTS, totals[1:].tolist()):
            key = self.prefix if name == "total" else f"{self.prefix}_{name}"
            engine.state.metrics[key] = value / count

    def _logit(self, prob: torch.Tensor) -> torch.Tensor:
        return torch.logit(prob[None].float().clamp(self.eps, 1.0 - self.eps))

    def _scan_targets(
        self, label: Any, nodules: Any, pred_shape: Sequence[int], device: torch.device
    ) -> dict[str, torch.Tensor]:
        table = np.asarray(torch.as_tensor(nodules).detach().cpu(), dtype=np.float32).reshape(-1, 7)
        rows = table[(table[:, 5] == NODULE) & (table[:, 6] > 0)]
        ids = rows[:, 6].astype(np.int64)
        size = int(ids.max(initial=0)) + 1
        diameters, malignancy = np.zeros(size, np.float32), np.full(size, -1.0, np.float32)
        diameters[ids], malignancy[ids] = rows[:, 3], rows[:, 4]
        label = torch.as_tensor(label).detach().cpu()
        made = self.targets({"label": label, "nodule_diameters": diameters, "nodule_malignancy": malignancy})
        size = list(label.shape[1:])
        if [math.ceil(n / self.stride) for n in size] != list(pred_shape):
            raise ValueError(
                f"validation prediction shape {list(pred_shape)} does not match the label shape {size} at "
                f"model.output_stride {self.stride} (expected the label shape / stride, rounded up)"
            )
        pad = [p for n in reversed(size) for p in (0, math.ceil(n / self.stride) * self.stride - n)]
        return {k: F.pad(torch.as_tensor(made[k])[None].float(), pad).to(device) for k in TARGET_KEYS}
