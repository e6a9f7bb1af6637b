"""Generator domains: disjoint regions of the synthetic parameter space, for training and for held-out validation.

A detector trained on one synthetic look learns that look. Every scan therefore draws its patient, pathology and
scanner parameters from the ranges of a :class:`Domain`, and validation uses a second domain whose ranges do not
overlap the training domain on the axes that change how nodules and their mimics look:

* ``train``: moderate dose (lung noise sigma 8-40 HU), soft to medium-sharp kernels, normal vessel density, slim
  to average body habitus, ground-glass nodules at -650..-350 HU, lungs at -885..-845 HU.
* ``heldout``: low dose (40-60 HU), sharp kernels with edge overshoot, 25-60 % denser vessel trees, large bodies
  (thicker fat, wider field of view), ground-glass at the far ends (-760..-650 and -350..-250 HU), lungs at
  -915..-885 HU, more emphysema, streaks and breathing motion, nodules skewed small.

Shared axes (point-spread width, slice spacing, anatomy, nodule shapes) are drawn from the same ranges in both.
Nothing trained or selected on ``train`` scans ever sees a ``heldout`` scan: ``make demo`` and ``bench_quality``
report both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DOMAINS", "Domain", "draw", "get_domain"]

Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Ranges (uniform unless a tuple of bands is given) from which one scan's parameters are drawn.

    Attributes:
        name: domain name (``train`` or ``heldout``).
        noise_hu: lung noise standard deviation after the point-spread blur (HU).
        sharpness: reconstruction-kernel edge enhancement (unsharp-mask gain; 0 is a soft kernel).
        vessel_density: multiplier on the preset's attraction points per vascular tree.
        fat_mm: subcutaneous fat thickness (body habitus; the field of view follows the body).
        lung_hu: parenchyma attenuation at full inspiration.
        ggo_hu: bands of ground-glass attenuation (each band equally likely).
        nodule_median_mm: median of the log-normal nodule diameters.
        emphysema_prob: probability of centrilobular/paraseptal emphysema.
        streak_prob: probability of bone/metal streaks on some slices.
        motion_prob: probability of breathing-motion blur near the diaphragm.
        scars: mean number of scars / plate atelectases per scan (Poisson).
        juxtavascular_share: share of nodules placed touching a vessel.
    """

    name: str
    noise_hu: Range
    sharpness: Range
    vessel_density: Range
    fat_mm: Range
    lung_hu: Range
    ggo_hu: tuple[Range, ...]
    nodule_median_mm: float
    emphysema_prob: float
    streak_prob: float
    motion_prob: float
    scars: float
    juxtavascular_share: float


DOMAINS: dict[str, Domain] = {
    "train": Domain(
        name="train",
        noise_hu=(8.0, 40.0),
        sharpness=(0.0, 0.7),
        vessel_density=(0.8, 1.25),
        fat_mm=(3.0, 16.0),
        lung_hu=(-885.0, -845.0),
        ggo_hu=((-650.0, -350.0),),
        nodule_median_mm=6.5,
        emphysema_prob=0.3,
        streak_prob=0.3,
        motion_prob=0.2,
        scars=1.5,
        juxtavascular_share=0.25,
    ),
    "heldout": Domain(
        name="heldout",
        noise_hu=(40.0, 60.0),
        sharpness=(0.7, 1.3),
        vessel_density=(1.25, 1.6),
        fat_mm=(16.0, 30.0),
        lung_hu=(-915.0, -885.0),
        ggo_hu=((-760.0, -650.0), (-350.0, -250.0)),
        nodule_median_mm=5.5,
        emphysema_prob=0.5,
        streak_prob=0.6,
        motion_prob=0.4,
        scars=3.0,
        juxtavascular_share=0.35,
    ),
}


def get_domain(domain: str | Domain) -> Domain:
    """The :class:`Domain` called ``domain`` (or ``domain`` itself).

    Raises:
        ValueError: an unknown domain name.
    """
    if isinstance(domain, Domain):
        return domain
    if domain not in DOMAINS:
        raise ValueError(f"synthetic domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    return DOMAINS[domain]


def draw(rng: np.random.Generator, value: Range | tuple[Range, ...]) -> float:
    """One draw from a range ``(lo, hi)`` or from one of several equally likely bands ``((lo, hi), ...)``."""
    if isinstance(value[0], tuple):
        value = value[int(rng.integers(len(value)))]
    return float(rng.uniform(*value))
