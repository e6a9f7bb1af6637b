"""FROC figure (``froc.png``) drawn with matplotlib's Agg canvas; pyplot and the global backend are left untouched."""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pivot_monai.metrics.froc import FROCResult

__all__ = ["plot_froc"]

logger = logging.getLogger(__name__)

_CURVE_POINTS = 256


def _rate_label(rate: float) -> str:
    frac = Fraction(rate).limit_denominator(64)
    return f"{frac.numerator}/{frac.denominator}" if frac.denominator > 1 else f"{frac.numerator}"


def plot_froc(result: FROCResult, path: str | Path, title: str | None = None, *, dpi: int = 150) -> Path:
    """Draw the FROC curve, its operating points, the bootstrap band (when ``result.ci`` is set) and the CPM.

    The x axis is log2 FP/scan over ``[min(fp_rates), max(fp_rates)]`` (1/8 to 8 for LUNA16); the curve is the same
    linear interpolation of ``(result.fps, result.sensitivity)`` that defines the operating points.

    Args:
        result: output of :func:`pivot_monai.metrics.froc.compute_froc`.
        path: PNG file to write (``froc.png``); parent folders are created.
        title: figure title. Defaults to ``"FROC"`` followed by the CPM.
        dpi: resolution. Defaults to 150.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    rates = np.asarray(result.fp_rates, dtype=np.float64)
    lo, hi = float(rates.min()), float(rates.max())
    cpm_text = "CPM n/a" if not math.isfinite(result.cpm) else f"CPM = {result.cpm:.3f}"
    fig = Figure(figsize=(6.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if result.n_nodules == 0 or not np.isfinite(result.sensitivity).all():
        logger.warning("plot_froc: no nodules, so no FROC curve; writing an empty figure to %s", path)
        ax.text(0.5, 0.5, "no true nodules: FROC undefined", ha="center", va="center", transform=ax.transAxes)
    else:
        if result.ci is not None:
            ax.fill_between(
                result.ci["curve_fps"],
                result.ci["curve_lower"],
                result.ci["curve_upper"],
                color="tab:blue",
                alpha=0.2,
                linewidth=0,
                label=f"{result.ci['percentiles'][0]:g}-{result.ci['percentiles'][1]:g} % bootstrap "
                f"(n={result.ci['n_valid']})",
            )
        x = np.geomspace(lo, hi, _CURVE_POINTS)
        ax.plot(
            x,
            np.interp(x, result.fps, result.sensitivity),
            color="tab:blue",
            linewidth=2,
            label=f"{cpm_text} ({result.n_nodules} nodules, {result.n_scans} scans)",
        )
        ax.plot(
            rates, result.sensitivities, "o", color="tab:red", markersize=5, clip_on=False, label="operating points"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(rates)
    ax.set_xticklabels([_rate_label(r) for r in rates])
    ax.minorticks_off()
    ax.set_yticks(np.linspace(0.0, 1.0, 11))
    ax.grid(True, which="major", alpha=0.4)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(f"{title or 'FROC'} - {cpm_text}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
