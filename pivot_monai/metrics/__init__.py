"""metrics stage of PIVOT: LUNA16 FROC/CPM and the other validation metrics, as plain maths (no ignite import).

:func:`plot_froc` is imported on first use, so code that only computes metrics (``pivot infer``) never loads
matplotlib.
"""

from __future__ import annotations

from pivot_monai.metrics.detection import (
    UNKNOWN_DIAMETER_MM,
    NoduleMatch,
    ScanCandidates,
    ScanMatch,
    center_accuracy,
    detection_dice,
    malignancy_auc,
    match_candidates,
    match_scan,
    match_scans,
    mean_center_distance,
    roc_auc,
    size_accuracy,
    size_mae,
    summarize_detection,
)
from pivot_monai.metrics.froc import (
    LUNA16_FP_RATES,
    SUBMISSION_COLUMNS,
    FROCResult,
    candidates_from_rows,
    compute_froc,
    read_submission_csv,
    write_submission_csv,
)


def __getattr__(name: str) -> object:
    if name == "plot_froc":
        from pivot_monai.metrics.plots import plot_froc

        return plot_froc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LUNA16_FP_RATES",
    "SUBMISSION_COLUMNS",
    "UNKNOWN_DIAMETER_MM",
    "FROCResult",
    "NoduleMatch",
    "ScanCandidates",
    "ScanMatch",
    "candidates_from_rows",
    "center_accuracy",
    "compute_froc",
    "detection_dice",
    "malignancy_auc",
    "match_candidates",
    "match_scan",
    "match_scans",
    "mean_center_distance",
    "plot_froc",
    "read_submission_csv",
    "roc_auc",
    "size_accuracy",
    "size_mae",
    "summarize_detection",
    "write_submission_csv",
]
