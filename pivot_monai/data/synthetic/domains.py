"""Generator domains: disjoint regions of the synthetic parameter space, for training and for held-out validation.

A detector trained on one synthetic look learns that look. Every scan therefore draws its patient, pathology and
scanner parameters from the ranges of a :class:`Domain`, and validation uses a second domain whose ranges do not
overlap the training domain on the axes that change how nodules and their mimics look.

The training domain spans the real-CT range of every such axis, as a real training set does (LUNA16 holds
low-dose scans, sharp lung kernels, slim and obese patients): a detector that never saw a 50 HU low-dose scan or a
sharp kernel fails on the first one, whatever generator it comes from. Its ranges are bands with gaps between them;
the held-out domain takes the gaps and one far end of each axis, so no held-out scan shares a value with a training
scan on any of these axes, and part of it lies beyond anything trained on:

* noise sigma in the lungs (HU): train 8-22 and 30-50; held-out 22-30 and 50-60 (low dose);
* kernel edge enhancement: train 0-0.4 and 0.6-1.0 (soft to sharp); held-out 0.4-0.6 and 1.0-1.3 (sharpest);
* vessel-tree density: train 0.8-1.05 and 1.2-1.4; held-out 1.05-1.2 and 1.4-1.6 (densest);
* subcutaneous fat (body habitus, the field of view follows): train 3-12 and 18-24 mm; held-out 12-18 and 24-30;
* lung attenuation: train -910..-890 and -875..-855 HU; held-out -890..-875 and -925..-910 (the parenchyma value
  before vessels are added; the training bands put mean lung density and Perc15 inside their real-CT ranges);
* ground-glass attenuation: train -720..-620 and -560..-300 HU (the real -700..-300 range); held-out -620..-560
  and both far ends, -780..-720 and -300..-240;
* the held-out domain also has more emphysema, streaks, breathing motion and scars, more juxtavascular nodules,
  and nodules skewed small.

Shared axes (point-spread width, slice spacing, anatomy, nodule shapes) are drawn from the same ranges in both.
Nothing trained or selected on ``train`` scans ever sees a ``heldout`` scan: ``make demo`` and ``bench_quality``
report both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DOMAINS", "Domain", "draw", "get_domain"]

Range = tuple[float, float]
Bands = tuple[Range, ...]


@dataclass(frozen=True)
class Domain:
    """Bands from which one scan's parameters are drawn: one band, equally likely, then uniform within it.

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
    noise_hu: Bands
    sharpness: Bands
    vessel_density: Bands
    fat_mm: Bands
    lung_hu: Bands
    ggo_hu: Bands
    nodule_median_mm: float
    emphysema_prob: float
    streak_prob: float
    motion_prob: float
    scars: float
    juxtavascular_share: float


DOMAINS: dict[str, Domain] = {
    "train": Domain(
        name="train",
        noise_hu=((8.0, 22.0), (30.0, 50.0)),
        sharpness=((0.0, 0.4), (0.6, 1.0)),
        vessel_density=((0.8, 1.05), (1.2, 1.4)),
        fat_mm=((3.0, 12.0), (18.0, 24.0)),
        lung_hu=((-910.0, -890.0), (-875.0, -855.0)),
        ggo_hu=((-720.0, -620.0), (-560.0, -300.0)),
        nodule_median_mm=6.5,
        emphysema_prob=0.3,
        streak_prob=0.3,
        motion_prob=0.2,
        scars=1.5,
        juxtavascular_share=0.25,
    ),
    "heldout": Domain(
        name="heldout",
        noise_hu=((22.0, 30.0), (50.0, 60.0)),
        sharpness=((0.4, 0.6), (1.0, 1.3)),
        vessel_density=((1.05, 1.2), (1.4, 1.6)),
        fat_mm=((12.0, 18.0), (24.0, 30.0)),
        lung_hu=((-890.0, -875.0), (-925.0, -910.0)),
        ggo_hu=((-620.0, -560.0), (-780.0, -720.0), (-300.0, -240.0)),
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
