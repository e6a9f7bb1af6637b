"""inference stage of PIVOT: sliding-window prediction, peak decoding, back to world coordinates."""

from __future__ import annotations

from pivot_monai.inference.decode import DecodeSettings, candidates_to_world, decode_peaks, output_to_input_index
from pivot_monai.inference.postprocess import DecodeCandidatesd, candidate_table, sphere_mask

__all__ = [
    "DecodeCandidatesd",
    "DecodeSettings",
    "candidate_table",
    "candidates_to_world",
    "decode_peaks",
    "output_to_input_index",
    "sphere_mask",
]
