"""Synthetic LUNA16-style chest CT with annotated lung nodules.

A parametric adult chest (body wall with fat and muscle, ribs, spine, sternum and scapulae, mediastinum with heart
and great vessels, diaphragm domes over liver and stomach, two textured lungs tapering to apex and base) is drawn
with pulmonary vessel and airway trees (hard negatives), 0-4 nodules per scan (solid, part-solid, ground-glass,
calcified; isolated, juxtapleural, juxtavascular; lobulated, sometimes spiculated) and tiny excluded findings, then
blurred, made noisy and quantised like a CT scanner. Arrays are ``(x, y, z)`` int16 HU; world coordinates are LPS mm
with ``world = origin + direction @ (spacing * index)``.

Size presets:

* ``small``: 128-160 px in-plane at about 2.0-2.6 mm, 110-200 slices at 1.5-2.5 mm (LUNA16's slice limit); under
  1 s per scan on one CPU core. For tests and quick demos.
* ``fullsize``: 512 x 512 in-plane at 0.6-1.0 mm (field of view fitted to the body), 110-300 slices of 1-2.5 mm
  (mostly 1.25-2 mm, some reconstructed thicker than their spacing) covering lungs 225-290 mm tall; 6-10 s per
  scan on one CPU core, about 1 GB peak memory.

Entry points: :func:`generate_dataset` (LUNA16 folder layout), :func:`generate_scan` / :func:`synthesize_scan` (one
scan in memory) and :func:`render_preview` (PNG of a nodule in lung window).
"""

from __future__ import annotations

from pivot_monai.data.synthetic.dataset import (
    SyntheticScan,
    dataset_is_current,
    generate_dataset,
    generate_scan,
    make_seriesuid,
    scan_rng,
    synthesize_scan,
)
from pivot_monai.data.synthetic.nodules import sample_nodule_diameters
from pivot_monai.data.synthetic.scanner import GENERATOR_VERSION, PRESETS

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "SyntheticScan",
    "dataset_is_current",
    "generate_dataset",
    "generate_scan",
    "make_seriesuid",
    "render_preview",
    "sample_nodule_diameters",
    "scan_rng",
    "synthesize_scan",
]


def __getattr__(name: str):
    # render_preview imports matplotlib; load it only when asked for
    if name == "render_preview":
        from pivot_monai.data.synthetic.preview import render_preview

        return render_preview
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
