"""Appearance augmentation MONAI has no transform for: correlated CT noise and nodule contrast.

* :class:`RandCorrelatedNoised`: CT noise is not white. A reconstruction kernel shapes its power spectrum, and after
  resampling to the training spacing what is left is grain of about one voxel, the scale of a 3-4 mm nodule at
  1.5 mm. MONAI's ``RandGaussianNoised`` adds independent voxel noise only; this draws white noise, low-passes it
  with a Gaussian of a random width and rescales it to a random standard deviation, so low-dose scans with sharp
  or soft kernels are in the training distribution.
* :class:`RandLesionContrastd`: ground-glass and part-solid nodules differ from solid ones mainly in how far they
  rise above the parenchyma, and scanners and inspiration move that contrast too. This scales each labelled
  nodule's difference from its surrounding lung by a random factor, so faint nodules are not starved.

Both work on the (C, X, Y, Z) crops of the training pipeline and leave the label unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage as ndi

__all__ = ["RandCorrelatedNoised", "RandLesionContrastd"]


def _as_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _like(array: np.ndarray, ref: Any) -> Any:
    """``array`` as the type of ``ref`` (a tensor keeps its dtype and device; a MetaTensor its metadata)."""
    if isinstance(ref, torch.Tensor):
        out = ref.clone()
        out.copy_(torch.as_tensor(array, dtype=ref.dtype))
        return out
    return array.astype(np.asarray(ref).dtype, copy=False)


class RandCorrelatedNoised(RandomizableTransform, MapTransform):
    """Add Gaussian noise with a random grain (spatial correlation) and a random strength.

    Args:
        keys: image keys.
        prob: probability of adding noise to a sample. Default 0.1.
        std: largest standard deviation of the added noise, in image units (0.04 is 56 HU on the default
            [-1000, 400] window); each draw picks one in ``[0, std]``. Default 0.04.
        sigma_range: ``(low, high)`` width in voxels of the Gaussian that correlates the noise; each draw picks one
            (below 0.3 the noise stays white). Default (0.0, 1.2).
        mean: mean of the added noise. Default 0.0.
        sample_std: draw the deviation in ``[0, std]`` (True) or always use ``std`` (False). Default True.
        allow_missing_keys: skip missing keys. Default False.

    Example:
        >>> t = RandCorrelatedNoised("image", prob=1.0, std=0.05, sigma_range=(1.0, 1.0))
        >>> out = t({"image": torch.zeros(1, 16, 16, 16)})["image"]
        >>> bool(0.0 < float(out.std()) <= 0.05)
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        std: float = 0.04,
        sigma_range: Sequence[float] = (0.0, 1.2),
        mean: float = 0.0,
        sample_std: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mean, self.sample_std = float(mean), bool(sample_std)
        lo, hi = (float(v) for v in sigma_range)
        if std < 0 or not 0 <= lo <= hi:
            raise ValueError(f"noise: std must be >= 0 and sigma_range 0 <= low <= high, got {std} and {[lo, hi]}")
        self.std, self.sigma_range = float(std), (lo, hi)
        self._std = self._sigma = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._std = float(self.R.uniform(0.0, self.std)) if self.sample_std else self.std
        self._sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform or (self._std == 0.0 and self.mean == 0.0):
            return d
        for key in self.key_iterator(d):
            image = _as_array(d[key]).astype(np.float32)
            noise = self.R.standard_normal(image.shape).astype(np.float32)
            if self._sigma >= 0.3:
                # per channel, spatial axes only
                noise = ndi.gaussian_filter(noise, sigma=(0.0,) + (self._sigma,) * (noise.ndim - 1))
            noise *= self._std / max(float(noise.std()), 1e-8)
            noise += self.mean
            d[key] = _like(image + noise, d[key])
        return d


class RandLesionContrastd(RandomizableTransform, MapTransform):
    """Scale each labelled nodule's contrast against the lung around it by a random factor.

    Inside a nodule's mask (softened by a Gaussian so the edge stays smooth) the image becomes
    ``bg + f * (image - bg)``, where ``bg`` is the 30th percentile of a shell of voxels around the nodule (the lung
    level, below the vessels and the chest wall that share the shell) and ``f`` is drawn
    per nodule from ``factor_range``: below 1 a solid nodule approaches ground glass, above 1 it becomes denser.

    Args:
        keys: image keys.
        label_key: the (1, X, Y, Z) instance label (0 background, one id per finding).
        prob: probability of changing a sample (then every nodule in it gets its own factor). Default 0.1.
        factor_range: ``(low, high)`` contrast factors, ``0 < low <= high``. Default (0.5, 1.2).
        shell: voxels between the nodule mask and the outer edge of the background shell. Default 3.
        allow_missing_keys: skip missing keys. Default False.

    Example:
        >>> img = torch.zeros(1, 20, 20, 20); lab = torch.zeros(1, 20, 20, 20); img[:, 8:12, 8:12, 8:12] = 1.0
        >>> lab[:, 8:12, 8:12, 8:12] = 1
        >>> t = RandLesionContrastd("image", "label", prob=1.0, factor_range=(0.5, 0.5))
        >>> round(float(t({"image": img, "label": lab})["image"][0, 10, 10, 10]), 2) < 1.0
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.1,
        factor_range: Sequence[float] = (0.5, 1.2),
        shell: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        lo, hi = (float(v) for v in factor_range)
        if not 0 < lo <= hi:
            raise ValueError(f"augmentation.lesion_contrast.factor_range must be 0 < low <= high, got {[lo, hi]}")
        if int(shell) < 1:
            raise ValueError(f"lesion contrast shell must be >= 1 voxel, got {shell}")
        self.label_key, self.factor_range, self.shell = label_key, (lo, hi), int(shell)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = _as_array(d[self.label_key])[0]
        ids = np.unique(label[label > 0]).astype(int)
        if ids.size == 0:
            return d
        factors = {i: float(self.R.uniform(*self.factor_range)) for i in ids}
        for key in self.key_iterator(d):
            image = _as_array(d[key]).astype(np.float32)
            d[key] = _like(self._apply(image, label, factors), d[key])
        return d

    def _apply(self, image: np.ndarray, label: np.ndarray, factors: Mapping[int, float]) -> np.ndarray:
        out = image.copy()
        pad = self.shell + 2
        for box_id, box in enumerate(ndi.find_objects(label.astype(np.int32)), start=1):
            if box is None or box_id not in factors:
                continue
            # the nodule's bounding box plus the shell, clipped to the crop: everything below is local
            win = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, label.shape))
            mask = label[win] == box_id
            near = ndi.binary_dilation(mask, iterations=1)
            ring = ndi.binary_dilation(mask, iterations=self.shell) & ~near
            if not ring.any():
                continue
            weight = ndi.gaussian_filter(near.astype(np.float32), 0.7)
            for c in range(out.shape[0]):
                patch = out[c][win]
                bg = float(np.percentile(patch[ring], 30))
                out[c][win] = patch + weight * (factors[box_id] - 1.0) * (patch - bg)
        return out
