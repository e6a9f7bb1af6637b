"""Nodule-aware crop sampling: positive, random-negative and hard-negative crops, curriculum- and stage-aware.

:class:`NoduleCropSamplerd` takes the place of MONAI's ``RandCropByPosNegLabeld`` (and of the ``SpatialPadd``
before it) in the training transforms. With an empty pool, no curriculum and no stage it draws crops as
``RandCropByPosNegLabeld`` does: a ``pos / (pos + neg)`` share centred on random foreground voxels of the instance
label, the rest on random background voxels. On top of that it

* centres a ``hard_ratio`` share of the negatives on the pooled hard negatives of the scan
  (:class:`~pivot_monai.transforms.hard_negatives.HardNegativePool`, filled by
  :class:`~pivot_monai.handlers.hard_negative_mining.HardNegativeMiningHandler`),
* draws positives only from nodules at least ``min_diameter`` mm wide (the curriculum stage), and
* reads the crop size from a :class:`~pivot_monai.transforms.stages.StageState` (progressive patch sizes), and
* by default (``data.positive_sampling: instance``) picks the nodule of a positive crop uniformly among the scan's
  eligible nodules before picking one of its voxels (``size`` weights each nodule by 6 mm / its diameter instead,
  so 3-6 mm nodules, the ones a detector misses, are drawn more often than large ones).
  ``RandCropByPosNegLabeld`` picks a foreground *voxel*, so a
  12 mm nodule is drawn 27 times as often as a 4 mm one in the same scan and small nodules, the hard ones, are
  rarely seen; ``positive_sampling: voxel`` restores MONAI's behaviour; ``contrast`` multiplies the size weight
  by a weight for the nodule's contrast to the tissue around it (below).

``positive_sampling: contrast`` needs no nodule-type labels, so it works on LUNA16's ``annotations.csv`` as on our
synthetic scans. Per nodule it measures ``mean HU inside - mean HU of a shell around it`` (the shell is label-free
background a few voxels thick, its thickness a quarter of the nodule's extent, at least 2 voxels). The contrast
weight ``reference / contrast``, clipped to [1, 3], favours the faint nodules a detector starves on. On the
``make demo`` training scans at 1.25 mm (``data.positive_contrast_hu: 500``) the median contrast is 500 HU for solid
nodules (partial volume lowers it for small ones), 240 HU for part-solid and 150 HU for ground-glass, whose weights
average 1.1, 2.2 and 2.9; juxtapleural and juxtavascular nodules measure about as isolated ones do (the shell
is mostly lung), so they are not favoured. A scan whose eligible nodules are that faint also gets up to a quarter
more positive crops (its largest contrast weight, at most 1.25, scales its positive share), since most scans hold
one or two nodules and weighting within a scan alone would change little.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import CenterSpatialCrop, MapTransform, Randomizable, SpatialCrop, SpatialPad
from monai.transforms.traits import MultiSampleTrait
from monai.transforms.utils import correct_crop_centers

from pivot_monai.transforms.hard_negatives import HardNegativePool
from pivot_monai.transforms.stages import StageState

logger = logging.getLogger(__name__)


__all__ = [
    "CROP_KINDS",
    "POSITIVE_SAMPLING",
    "NoduleCropSamplerd",
    "StagedCenterSpatialCropd",
    "contrast_weight",
    "crop_ratios",
    "nodule_contrast",
    "stochastic_round",
]

CROP_KINDS = ("positive", "hard_negative", "negative")
"""Values of the ``"crop_kind"`` key added to every crop."""
POSITIVE_SAMPLING = ("instance", "voxel", "size", "contrast")
"""Values of ``data.positive_sampling``: a nodule uniformly, a nodule voxel uniformly (MONAI's way), a nodule
weighted by its size, or by its size and its contrast to its surroundings."""

_SIZE_REFERENCE_MM, _SIZE_MAX_WEIGHT = 6.0, 2.0
_CONTRAST_MAX_WEIGHT = 3.0
_CONTRAST_MAX_BOOST = 1.25  # at most this factor more positive crops for a scan of low-contrast nodules

_BACKGROUND_TRIES = 64


def crop_ratios(pos_neg_ratio: Sequence[float], mining: Mapping[str, Any] | None = None) -> tuple[float, float, float]:
    """``(pos, neg, hard_ratio)`` of the sampler from ``data.pos_neg_ratio`` and ``training.hard_negative_mining``.

    With mining enabled: one positive per ``neg_pos_ratio`` negatives, ``batch_hard_ratio`` of them hard; otherwise
    ``data.pos_neg_ratio`` and no hard negatives.

    Raises:
        ValueError: negative ratios or ``batch_hard_ratio`` outside [0, 1], naming the key.
    """
    if len(pos_neg_ratio) != 2 or min(pos_neg_ratio) < 0 or sum(pos_neg_ratio) <= 0:
        raise ValueError(f"data.pos_neg_ratio must be [pos, neg] >= 0 with a positive sum, got {list(pos_neg_ratio)}")
    mining = dict(mining or {})
    if mining.get("enabled", False):
        neg, hard = float(mining.get("neg_pos_ratio", 3.0)), float(mining.get("batch_hard_ratio", 0.5))
        if neg < 0:
            raise ValueError(f"training.hard_negative_mining.neg_pos_ratio must be >= 0, got {neg}")
        if not 0.0 <= hard <= 1.0:
            raise ValueError(f"training.hard_negative_mining.batch_hard_ratio must be in [0, 1], got {hard}")
        pos_given, neg_given = (float(v) for v in pos_neg_ratio)
        if pos_given != neg_given and not math.isclose(pos_given * neg, neg_given):  # [1, 1] is the default
            logger.warning(
                "data.pos_neg_ratio %s is not used while training.hard_negative_mining is enabled: crops are 1 "
                "positive per training.hard_negative_mining.neg_pos_ratio = %g negatives; set that key instead",
                list(pos_neg_ratio),
                neg,
            )
        return 1.0, neg, hard
    return float(pos_neg_ratio[0]), float(pos_neg_ratio[1]), 0.0


def stochastic_round(x: float, rng: np.random.RandomState) -> int:
    """``floor(x)`` plus one with probability ``x - floor(x)``: exact for integers, unbiased otherwise."""
    low = math.floor(x)
    return int(low + (rng.random_sample() < x - low))


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def contrast_weight(contrast_hu: np.ndarray | Sequence[float], reference_hu: float) -> np.ndarray:
    """Draw weight of nodules of contrast ``contrast_hu``: ``reference / contrast`` clipped to [1, 3]; 1 for ``nan``
    (unmeasurable), 3 for a contrast at or below 0."""
    c = np.asarray(contrast_hu, dtype=float)
    ratio = float(reference_hu) / np.maximum(np.nan_to_num(c, nan=np.inf), 1e-6)
    return np.clip(np.where(np.isfinite(c), ratio, 1.0), 1.0, _CONTRAST_MAX_WEIGHT)


def nodule_contrast(
    image: np.ndarray, label: np.ndarray, ids: Sequence[int], hu_window: Sequence[float] = (-1000.0, 400.0)
) -> dict[int, float]:
    """Contrast in HU of each nodule ``ids`` of an instance ``label`` to a shell of background around it.

    ``mean(image inside) - mean(image in the shell)``, scaled from the [0, 1] window back to HU (``hu_window`` as
    ``data.hu_window``). The shell is the nodule dilated by a quarter of its largest extent (at least 2 voxels),
    less every labelled voxel; a nodule without background around it gets ``nan``. Only a box around each nodule
    is touched, so this costs milliseconds per scan.

    Args:
        image: (X, Y, Z) windowed image in [0, 1] (``pivot preprocess`` output).
        label: (X, Y, Z) instance label, 0 background.
        ids: label ids to measure.
        hu_window: the ``[low, high]`` HU window the image was scaled from.

    Returns:
        ``{id: contrast in HU}``.
    """
    from scipy import ndimage  # a dependency of MONAI's morphology transforms; imported where used

    width = float(hu_window[1]) - float(hu_window[0])
    boxes = ndimage.find_objects(np.rint(label).astype(np.int64))  # boxes[i]: the bounding box of label id i + 1
    out: dict[int, float] = {}
    for uid in ids:
        found = boxes[int(uid) - 1] if 0 < int(uid) <= len(boxes) else None
        if found is None:
            out[int(uid)] = float("nan")
            continue
        lo, hi = np.array([s.start for s in found]), np.array([s.stop for s in found])
        shell = max(2, int(math.ceil((hi - lo).max() / 4)))
        box = tuple(slice(max(0, a - shell), min(n, b + shell)) for a, b, n in zip(lo, hi, label.shape))
        sub = label[box]
        inside = sub == uid
        around = ndimage.binary_dilation(inside, iterations=shell) & (sub == 0)
        if not around.any():
            out[int(uid)] = float("nan")
            continue
        values = image[box]
        out[int(uid)] = float(values[inside].mean() - values[around].mean()) * width
    return out


class NoduleCropSamplerd(Randomizable, MapTransform, MultiSampleTrait):
    """Draw ``num_samples`` crops per volume: positives, hard negatives and random negatives.

    Per volume, ``round(num_samples * pos / (pos + neg))`` crops are positive (stochastic rounding, so the expected
    share is exact; none for a scan without eligible nodules), and of the negatives ``round(n_neg * hard_ratio)`` are
    centred on pooled hard negatives of the scan (none while the pool has no entry for it). Positive centres are
    random voxels of nodules with diameter ``>= min_diameter`` (``nodule_diameters`` is indexed by label id; with a
    positive minimum, instances of unknown diameter are skipped): with ``positive_sampling="instance"`` a nodule is
    first drawn uniformly, then one of its voxels; with ``"voxel"`` any eligible voxel (``RandCropByPosNegLabeld``).
    Negative centres are random voxels with label 0.
    Centres are moved inwards so the crop fits (MONAI ``correct_crop_centers``), the crop is cut with MONAI
    ``SpatialCrop`` and padded with ``SpatialPad`` where the volume is smaller than the crop.

    Args:
        keys: keys to crop (image and instance label).
        label_key: the (1, X, Y, Z) instance label. Default ``"label"``.
        spatial_size: crop size when the stage sets no patch size.
        num_samples: crops per volume (``data.samples_per_volume``). Default 4.
        pos: positive weight. Default 1. neg: negative weight. Default 1.
        hard_ratio: share of negatives centred on pooled hard negatives, in [0, 1]. Default 0.
        pool: the :class:`~pivot_monai.transforms.hard_negatives.HardNegativePool`, or ``None``.
        stage: the :class:`~pivot_monai.transforms.stages.StageState` (crop size and minimum diameter), or ``None``.
        crop_margin: context voxels around the stage's patch on each side (``data.crop_margin``). Default 0.
        min_diameter: minimum nodule diameter (mm) without a stage; with one, the larger of the two. Default 0.
        seriesuid_key: key of the scan id (``LoadNoduleMetad``). Default ``"seriesuid"``.
        diameters_key: key of the per-label-id diameters (``LoadNoduleMetad``). Default ``"nodule_diameters"``.
        pad_mode: ``SpatialPad`` mode. Default ``"constant"`` (zeros).
        positive_sampling: ``"instance"`` (each nodule equally likely) or ``"voxel"`` (each nodule voxel equally
            likely, as MONAI) or ``"size"`` (a nodule drawn with weight ``6 mm / diameter``, at most 2) or
            ``"contrast"`` (that weight times ``contrast_reference_hu / contrast``, clipped to [1, 3], and up to 1.25x
            the positive share for a scan of low-contrast nodules; see the module docstring). Default
            ``"instance"``.
        image_key: key of the (1, X, Y, Z) windowed image the contrast is measured on. Default ``"image"``.
        hu_window: ``data.hu_window`` the image was scaled from, to express contrasts in HU.
        contrast_reference_hu: contrast (HU) at and above which a nodule gets contrast weight 1
            (``data.positive_contrast_hu``). Default 500.

    Adds ``"crop_kind"`` (one of :data:`CROP_KINDS`) and ``"crop_center"`` ((3,) int array) to every crop.

    Raises:
        ValueError: invalid sizes or ratios.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        spatial_size: Sequence[int] = (64, 64, 64),
        num_samples: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        hard_ratio: float = 0.0,
        pool: HardNegativePool | None = None,
        stage: StageState | None = None,
        crop_margin: int = 0,
        min_diameter: float = 0.0,
        seriesuid_key: str = "seriesuid",
        diameters_key: str = "nodule_diameters",
        pad_mode: str = "constant",
        positive_sampling: str = "instance",
        image_key: str = "image",
        hu_window: Sequence[float] = (-1000.0, 400.0),
        contrast_reference_hu: float = 500.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if int(num_samples) < 1:
            raise ValueError(f"data.samples_per_volume must be >= 1, got {num_samples}")
        if min(pos, neg) < 0 or pos + neg <= 0:
            raise ValueError(f"pos and neg must be >= 0 with a positive sum, got pos={pos}, neg={neg}")
        if not 0.0 <= hard_ratio <= 1.0:
            raise ValueError(f"hard_ratio must be in [0, 1], got {hard_ratio}")
        if len(spatial_size) != 3 or min(spatial_size) < 1 or int(crop_margin) < 0:
            raise ValueError(
                f"spatial_size must be 3 positive ints and crop_margin >= 0, got {list(spatial_size)}, {crop_margin}"
            )
        if positive_sampling not in POSITIVE_SAMPLING:
            raise ValueError(
                f"data.positive_sampling must be one of {list(POSITIVE_SAMPLING)}, got {positive_sampling!r}"
            )
        if not float(contrast_reference_hu) > 0 or len(hu_window) != 2 or float(hu_window[1]) <= float(hu_window[0]):
            raise ValueError(
                "data.positive_contrast_hu must be > 0 and data.hu_window [low, high] with low < high, got "
                f"{contrast_reference_hu} and {list(hu_window)}"
            )
        self.positive_sampling = positive_sampling
        self.image_key, self.hu_window = image_key, (float(hu_window[0]), float(hu_window[1]))
        self.contrast_reference_hu = float(contrast_reference_hu)
        # contrasts per scan: the cached volumes do not change between epochs (the sampler runs before augmentation)
        self._contrasts: dict[str, dict[int, float]] = {}
        self.label_key, self.spatial_size = label_key, tuple(int(s) for s in spatial_size)
        self.num_samples, self.pos_ratio, self.hard_ratio = int(num_samples), pos / (pos + neg), float(hard_ratio)
        self.pool, self.stage, self.crop_margin = pool, stage, int(crop_margin)
        self.min_diameter = float(min_diameter)
        self.seriesuid_key, self.diameters_key, self.pad_mode = seriesuid_key, diameters_key, pad_mode
        self._warned_small: set[tuple[int, ...]] = set()

    def crop_size(self) -> tuple[int, ...]:
        """Current crop size: the stage's patch plus margins, else ``spatial_size``."""
        return self.stage.crop_size(self.spatial_size, self.crop_margin) if self.stage else self.spatial_size

    def current_min_diameter(self) -> float:
        """Current minimum nodule diameter of positive crops (mm)."""
        return max(self.min_diameter, self.stage.min_diameter if self.stage else 0.0)

    def _foreground(self, label: np.ndarray, diameters: np.ndarray | None) -> np.ndarray:
        """Flat indices of voxels of nodules eligible as positive centres."""
        flat = np.flatnonzero(label > 0)
        min_d = self.current_min_diameter()
        if min_d <= 0 or flat.size == 0:
            return flat
        ids = np.rint(label.ravel()[flat]).astype(np.int64)
        diam = np.zeros(int(ids.max()) + 1) if diameters is None else np.asarray(diameters, dtype=float)
        diam = np.pad(diam, (0, max(0, int(ids.max()) + 1 - len(diam))))
        return flat[diam[ids] >= min_d]

    def contrast_weights(
        self, image: np.ndarray, label: np.ndarray, unique: np.ndarray, seriesuid: str | None = None
    ) -> np.ndarray:
        """Contrast weight per nodule id of ``unique``: ``reference / contrast`` in [1, 3] (1 if unmeasurable)."""
        cached = self._contrasts.get(seriesuid, {}) if seriesuid is not None else {}
        missing = [int(u) for u in np.rint(unique).astype(np.int64) if int(u) not in cached]
        if missing:
            cached = {**cached, **nodule_contrast(image, label, missing, self.hu_window)}
            if seriesuid is not None:
                self._contrasts[seriesuid] = cached
        contrast = np.array([cached[int(u)] for u in np.rint(unique).astype(np.int64)], dtype=float)
        return contrast_weight(contrast, self.contrast_reference_hu)

    def _nodule_weights(
        self,
        label: np.ndarray,
        unique: np.ndarray,
        diameters: np.ndarray | None,
        image: np.ndarray | None,
        seriesuid: str | None,
    ) -> tuple[np.ndarray | None, float]:
        """(Unnormalised draw weights of the nodule ids ``unique`` or None for uniform, positive-share factor)."""
        if self.positive_sampling not in ("size", "contrast"):
            return None, 1.0
        if diameters is None and self.positive_sampling == "size":
            return None, 1.0  # no diameters: every nodule equally likely
        weights = np.ones(len(unique))
        if diameters is not None:
            diam = np.asarray(diameters, dtype=float)
            index = np.rint(unique).astype(np.int64)
            d = np.where(index < len(diam), diam[np.minimum(index, len(diam) - 1)], 0.0)
            ref = _SIZE_REFERENCE_MM
            weights = np.minimum(ref / np.where(d > 0, d, ref), _SIZE_MAX_WEIGHT)
        if self.positive_sampling == "size":
            return weights, 1.0
        if image is None:
            raise ValueError(
                f"data.positive_sampling: contrast measures each nodule on the image, but the volume has no "
                f"{self.image_key!r} key: use positive_sampling: size, or keep the image in the sampler's keys"
            )
        contrast = self.contrast_weights(image, label, unique, seriesuid)
        return weights * contrast, float(min(contrast.max(), _CONTRAST_MAX_BOOST))

    def _positive_voxel(self, label: np.ndarray, fg: np.ndarray, weights: Mapping[int, float] | None = None) -> int:
        """A flat index among the eligible voxels ``fg``: of a drawn nodule (``weights`` by id: None is uniform), or
        any voxel (``voxel``)."""
        if self.positive_sampling == "voxel":
            return int(self.R.choice(fg))
        ids = label.ravel()[fg]
        unique = np.unique(ids)
        p = None
        if weights is not None and len(unique) > 1:
            p = np.array([weights[int(round(float(u)))] for u in unique], dtype=float)
            p = p / p.sum()
        instance = self.R.choice(unique, p=p)
        return int(self.R.choice(fg[ids == instance]))

    def _background_centre(self, label: np.ndarray) -> tuple[int, ...]:
        shape = label.shape
        for _ in range(_BACKGROUND_TRIES):  # nodules are tiny: rejection sampling avoids indexing the whole volume
            c = tuple(int(self.R.randint(s)) for s in shape)
            if label[c] == 0:
                return c
        bg = np.flatnonzero(label.ravel() == 0)
        flat = int(self.R.choice(bg)) if bg.size else int(self.R.randint(label.size))
        return tuple(int(i) for i in np.unravel_index(flat, shape))

    def plan(
        self,
        label: np.ndarray,
        diameters: np.ndarray | None = None,
        seriesuid: str | None = None,
        image: np.ndarray | None = None,
    ) -> list[tuple[str, tuple[int, ...]]]:
        """``num_samples`` ``(kind, centre)`` pairs for an (X, Y, Z) instance label (centres before correction);
        ``image`` (X, Y, Z) is read by ``positive_sampling: contrast`` only."""
        fg = self._foreground(label, diameters)
        weights, boost = None, 1.0
        if fg.size and self.positive_sampling != "voxel":
            unique = np.unique(label.ravel()[fg])
            w, boost = self._nodule_weights(label, unique, diameters, image, seriesuid)
            weights = None if w is None else {int(round(float(u))): float(x) for u, x in zip(unique, w)}
        share = min(1.0, self.pos_ratio * boost)
        n_pos = min(stochastic_round(self.num_samples * share, self.R), self.num_samples) if fg.size else 0
        n_neg = self.num_samples - n_pos
        hard = (
            self.pool.get(seriesuid)
            if (self.pool is not None and seriesuid is not None and self.hard_ratio > 0)
            else []
        )
        n_hard = min(stochastic_round(n_neg * self.hard_ratio, self.R), n_neg) if hard else 0
        out = []
        for _ in range(n_pos):
            out.append(
                (
                    "positive",
                    tuple(int(i) for i in np.unravel_index(self._positive_voxel(label, fg, weights), label.shape)),
                )
            )
        for _ in range(n_hard):
            index, _score = hard[int(self.R.randint(len(hard)))]
            out.append(("hard_negative", tuple(int(min(max(i, 0), s - 1)) for i, s in zip(index, label.shape))))
        for _ in range(n_neg - n_hard):
            out.append(("negative", self._background_centre(label)))
        return out

    def randomize(self, data: Any = None) -> None:  # plan() draws everything; kept for the Randomizable interface
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        label = _as_numpy(d[self.label_key])[0]
        diameters = d.get(self.diameters_key)
        uid = d.get(self.seriesuid_key)
        size = self.crop_size()
        if any(c > s for c, s in zip(size, label.shape)) and tuple(size) not in self._warned_small:
            self._warned_small.add(tuple(size))  # once per crop size, not once per volume and epoch
            logger.warning(
                "crop %s (data.patch_size + 2 * data.crop_margin) is larger than a training volume %s (%s): the crop "
                "is padded with %s values; a smaller data.patch_size trains faster on such volumes",
                list(size),
                list(label.shape),
                uid if uid is not None else "unnamed",
                self.pad_mode,
            )
        results = []
        contrast = self.positive_sampling == "contrast" and self.image_key in d
        image = _as_numpy(d[self.image_key])[0] if contrast else None
        for kind, centre in self.plan(
            label, None if diameters is None else _as_numpy(diameters), None if uid is None else str(uid), image
        ):
            centre = correct_crop_centers(list(centre), size, label.shape, allow_smaller=True)
            crop, pad = SpatialCrop(roi_center=centre, roi_size=size), SpatialPad(size, mode=self.pad_mode)
            out = dict(d)
            for key in self.key_iterator(d):
                out[key] = pad(crop(d[key]))
            out["crop_kind"], out["crop_center"] = kind, np.asarray(centre, dtype=np.int64)
            results.append(out)
        return results


class StagedCenterSpatialCropd(MapTransform):
    """Centre crop to the stage's patch size (``roi_size`` when the stage sets none), MONAI ``CenterSpatialCrop``.

    Args:
        keys: keys to crop.
        roi_size: patch size without a progressive stage (``data.patch_size``).
        stage: the shared :class:`~pivot_monai.transforms.stages.StageState`, or ``None``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        stage: StageState | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_size, self.stage = tuple(int(s) for s in roi_size), stage

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = self.stage.patch_size if self.stage is not None and self.stage.patch_size else self.roi_size
        crop = CenterSpatialCrop(size)
        for key in self.key_iterator(d):
            d[key] = crop(d[key])
        return d
