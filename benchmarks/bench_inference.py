"""End-to-end inference: raw ``.mhd`` to ``candidates.csv``, PIVOT's pipeline vs a plain MONAI sliding window.

Per scan, each side runs in a fresh process (peak RSS per case), alternating, ``--repeats`` rounds; medians.

* **pivot**: :func:`pivot_monai.inference.pipeline.infer_scans` with the config (default ``demo.yaml`` over
  ``train.yaml``): read, lung crop + resample + HU window (:func:`~pivot_monai.data.preprocess.preprocess_image`),
  Gaussian-blended sliding window, peak decoding, ``candidates.csv``.
* **baseline**: the same network weights, as trained (batch norm not folded, PyTorch's default memory format and
  allocator), through ``monai.inferers.sliding_window_inference`` over the **whole**
  volume resampled with SimpleITK to the same spacing (no lung crop), the same HU window, ``overlap=0.25`` and
  MONAI's other defaults (constant blending), ``sw_batch_size`` from the config (MONAI has no default); then the same
  :func:`~pivot_monai.inference.decode.decode_peaks` and ``candidates.csv``.
* **pivot + TTA** (full mode, ``--no-tta`` skips): the pipeline with ``inference.tta`` on, one round.
* **host levers** (full mode): PIVOT with ``device.reuse_freed_memory`` off, and the baseline given PIVOT's two generic
  host settings (``channels_last_3d`` weights and ``reuse_freed_memory``), alternating with the two cases above
  (``pivot infer`` applies the config's settings, default on, so **pivot** does too). The plain baseline has neither:
  MONAI's defaults are PyTorch's memory format and allocator.
* **pivot + classifier** (when ``fpr.pt`` lies beside the trained checkpoint, as ``make demo`` leaves it):
  the pipeline with the FP-reduction classifier, what ``pivot infer`` runs by default for such a model.
* **folder** (full mode): all scans in one process, model loaded once, both sides: what ``pivot infer <folder>`` sees.
* **pivot --amp** (full mode, on CPUs with native bf16 only): the pipeline with bf16 autocast, the opt-in CPU lever.
* **area anti-aliasing** (full mode): the pipeline with ``data.antialias: area`` instead of the default ``gaussian``
  (the box average without the residual blur), alternating with the cases above: its time and CPM on the same scans.

CPM of each side on the same scans against the generator's ``annotations.csv``
(:func:`~pivot_monai.metrics.compute_froc`). Without a trained checkpoint (``make demo`` writes
``bundle/models/model.pt``) seeded random weights are used: speed and memory hold, CPM means nothing.

Usage::

    python -m benchmarks.bench_inference [--checkpoint bundle/models/model.pt] [--config bundle/configs/demo.yaml]
    python -m benchmarks.bench_inference --quick     # 1 small scan at 4 mm, 32^3 windows, 1 round
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEMO_CONFIG,
    QUICK_OVERRIDES,
    WORK_DIR,
    CaseResult,
    Row,
    alternate,
    checkpoint_clashes,
    ensure_raw_dataset,
    format_table,
    froc_on_raw,
    load_profile,
    median,
    resolve_checkpoint,
    run_isolated,
    setup_logging,
    write_results,
)

__all__ = ["baseline_case", "main", "pivot_case"]

logger = logging.getLogger(__name__)

NAME = "inference"
TARGET_SECONDS, TARGET_RSS_MB, TARGET_SPEEDUP = 30.0, 4096.0, 5.0
TARGET_FPR_SECONDS = 5.0  # detector plus classifier, one fullsize scan end to end (issue 20)


def _host_runtime(sections: Mapping[str, Any], reuse_memory: bool | None) -> None:
    """The host settings ``pivot infer`` applies from the ``device`` section, ``reuse_memory`` overriding it."""
    from pivot_monai.host import HostTuning

    device = dict(sections.get("device") or {})
    if reuse_memory is not None:
        device["reuse_freed_memory"] = bool(reuse_memory)
    HostTuning.from_config(device, "cpu").apply()


def pivot_case(
    scan: str | Sequence[str],
    out_dir: str,
    checkpoint: str,
    sections: Mapping[str, Any],
    tta: bool,
    reuse_memory: bool | None = None,
    amp: bool | None = None,
    classifier: str | None = None,
) -> dict[str, Any]:
    """PIVOT's default inference, as ``pivot infer`` runs it, of one scan or a folder's scans in one process.

    Runs in its own process. ``reuse_memory`` overrides ``device.reuse_freed_memory`` and ``amp`` the mixed
    precision (``--amp``/``--no-amp``); ``None``: the config's, as ``pivot infer`` applies them. ``classifier``:
    the FP-reduction classifier's ``fpr.pt`` (loaded in the timed span, as ``pivot infer`` loads it), or ``None``.

    Returns:
        seconds (per scan: the total over the scans, model loading included, divided by their number), stages and
        candidates of the first scan.
    """
    from pivot_monai.inference.pipeline import CANDIDATES_NAME, infer_scans
    from pivot_monai.inference.settings import InferenceSettings
    from pivot_monai.metrics import ScanCandidates, read_submission_csv

    _host_runtime(sections, reuse_memory)
    scans = [scan] if isinstance(scan, str) else list(scan)
    start = time.perf_counter()
    settings = InferenceSettings.from_config(sections, device="cpu", tta=tta, amp=amp)
    stage2 = None
    if classifier is not None:
        from pivot_monai.inference.fpr import resolve_classifier

        stage2 = resolve_classifier(checkpoint, None, classifier)
    report = infer_scans(scans, out_dir, checkpoint, settings, raise_on_failure=True, classifier=stage2)
    seconds = (time.perf_counter() - start) / len(scans)
    uid = report["ok"][0]
    cands = read_submission_csv(Path(out_dir) / CANDIDATES_NAME).get(uid) or ScanCandidates(np.zeros((0, 3)), [])
    return {"seconds": seconds, "stages": report["seconds"][uid], "uid": uid, "candidates": cands}


def baseline_case(
    scan: str, uid: str, out_dir: str, checkpoint: str, sections: Mapping[str, Any], host_levers: bool = False
) -> dict[str, Any]:
    """Plain MONAI sliding window over the whole resampled scan (runs in its own process); same outputs.

    ``host_levers``: give the baseline PIVOT's two generic host settings, ``channels_last_3d`` weights
    (``device.channels_last``) and ``device.reuse_freed_memory``; plain MONAI has neither (the ablation row).
    """
    from pivot_monai.networks.checkpoint import load_model

    if host_levers:
        _host_runtime(sections, True)
    start = time.perf_counter()
    # plain: the trained modules as they are, in PyTorch's default memory format
    net = load_model(checkpoint, sections["model"], channels_last=host_levers)
    out = _baseline_scan(net, scan, uid, out_dir, sections)
    return {**out, "seconds": time.perf_counter() - start}


def baseline_folder_case(
    scans: Sequence[str], out_dir: str, checkpoint: str, sections: Mapping[str, Any]
) -> dict[str, Any]:
    """The baseline over several scans in one process (model loaded once): seconds per scan, first scan's outputs."""
    from pivot_monai.networks.checkpoint import load_model

    start = time.perf_counter()
    # plain: the trained modules as they are, in PyTorch's default memory format
    net = load_model(checkpoint, sections["model"], channels_last=False)
    outs = [
        _baseline_scan(net, scan, Path(scan).stem, str(Path(out_dir) / Path(scan).stem), sections) for scan in scans
    ]
    return {**outs[0], "seconds": (time.perf_counter() - start) / len(scans)}


def _baseline_scan(net: Any, scan: str, uid: str, out_dir: str, sections: Mapping[str, Any]) -> dict[str, Any]:
    """One scan through the plain pipeline with a loaded network; ``seconds`` excludes model loading."""
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from pivot_monai.data.geometry import Geometry
    from pivot_monai.inference.decode import DecodeSettings, decode_peaks, output_to_input_index
    from pivot_monai.metrics import ScanCandidates, write_submission_csv

    data, inference = sections["data"], sections["inference"]
    t = [time.perf_counter()]  # stages as in the pipeline's report (model loading is in the total only)
    raw = sitk.ReadImage(scan, sitk.sitkFloat32)
    t.append(time.perf_counter())
    grid = Geometry.from_sitk(raw).resampled(tuple(float(s) for s in data["target_spacing"]))
    image = sitk.Resample(
        raw,
        [int(v) for v in grid.size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in grid.origin],
        [float(v) for v in grid.spacing],
        [float(v) for v in grid.direction.reshape(-1)],
        -1000.0,
        sitk.sitkFloat32,
    )
    lo, hi = (float(v) for v in data["hu_window"])
    hu = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    x = torch.from_numpy(np.ascontiguousarray((np.clip(hu, lo, hi) - lo) / (hi - lo), dtype=np.float32))[None, None]
    t.append(time.perf_counter())
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        out = sliding_window_inference(
            x, roi_size=list(data["patch_size"]), sw_batch_size=int(inference["sw_batch_size"]), predictor=net
        )
    t.append(time.perf_counter())
    stride = int(round(x.shape[2] / out["heatmap"].shape[2]))
    decoded = decode_peaks(
        out["heatmap"],
        out["diameter"],
        out["malignancy"],
        DecodeSettings.from_config(inference),
        tuple(grid.spacing * stride),
    )
    world = grid.index_to_world(output_to_input_index(decoded["index"], stride).reshape(-1, 3)).reshape(-1, 3)
    cands = ScanCandidates(
        world, np.clip(decoded["score"], 0, 1), decoded["diameter_mm"], np.clip(decoded["malignancy"], 0, 1)
    )
    write_submission_csv(Path(out_dir) / "candidates.csv", {uid: cands})
    t.append(time.perf_counter())
    stages = {n: round(b - a, 3) for n, a, b in zip(("read", "preprocess", "network", "decode"), t[:-1], t[1:])}
    return {"seconds": t[-1] - t[0], "stages": stages, "uid": uid, "candidates": cands, "volume": list(x.shape[2:])}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 small scan at 4 mm with 32^3 windows, 1 round, no TTA")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt (default bundle/models/model.pt)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="profile layered over train.yaml")
    p.add_argument("--scans", type=int, default=3, help="fullsize scans")
    p.add_argument("--seed", type=int, default=1000, help="synthetic dataset seed (held out from training)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per scan")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each case (default OMP_NUM_THREADS)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="also time TTA (full: on)")
    return p.parse_args(argv)


def _froc(results: Mapping[str, Sequence[CaseResult]], raw_dir: Path, uids: Sequence[str]) -> Any:
    return froc_on_raw({u: results[u][0].value["candidates"] for u in uids}, raw_dir)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/inference.json`` and return the table rows."""
    from pivot_monai.host import cpu_has_native_bf16

    args = parse_args(argv)
    size, scans, repeats = ("small", 1, 1) if args.quick else ("fullsize", args.scans, args.repeats)
    tta = (not args.quick) if args.tta is None else args.tta
    sections = load_profile(args.config, QUICK_OVERRIDES if args.quick else None)
    checkpoint, trained = resolve_checkpoint(args.checkpoint, sections["model"], sections)
    raw_dir = ensure_raw_dataset(size, scans, args.seed)
    scan_paths = {p.name[: -len(".mhd")]: str(p) for p in sorted((raw_dir / "subset0").glob("*.mhd"))}
    out = WORK_DIR / f"infer_bench_{size}"
    per: dict[str, dict[str, list[CaseResult]]] = {
        "pivot": {}, "baseline": {}, "pivot_tta": {}, "pivot_no_reuse": {}, "baseline_levers": {}, "pivot_bf16": {},
        "pivot_area": {}, "pivot_fpr": {},
    }  # fmt: skip
    from pivot_monai.inference.fpr import CLASSIFIER_NAME

    # the second stage `pivot infer` runs by default when the detector has one (fpr.pt beside it)
    fpr = checkpoint.with_name(CLASSIFIER_NAME)
    fpr = fpr if trained and fpr.is_file() else None
    area = {**sections, "data": {**sections["data"], "antialias": "area"}}
    # a model records its preprocessing, and the predictor refuses other preprocessing than it was trained on
    area_clash = [] if args.quick else checkpoint_clashes(checkpoint, area)
    area_fits = not args.quick and not area_clash
    if area_clash:
        logger.info("the data.antialias: area arm is skipped: %s (its time needs a model trained with it, or none)",
                    "; ".join(area_clash))  # fmt: skip
    kw = {"threads": args.threads}
    ck = str(checkpoint)
    for uid, scan in scan_paths.items():
        cases = {
            "pivot": partial(run_isolated, pivot_case, scan, str(out / "pivot" / uid), ck, sections, False, **kw),
            "baseline": partial(
                run_isolated, baseline_case, scan, uid, str(out / "baseline" / uid), ck, sections, **kw
            ),
        }
        if fpr is not None:  # detector + FP-reduction classifier, the default operating point of such a model
            cases["pivot_fpr"] = partial(
                run_isolated, pivot_case, scan, str(out / "pivot_fpr" / uid), ck, sections, False, None, None,
                str(fpr), **kw,
            )  # fmt: skip
        if not args.quick:  # the allocator lever on both sides (device.reuse_freed_memory)
            cases["pivot_no_reuse"] = partial(
                run_isolated, pivot_case, scan, str(out / "pivot_no_reuse" / uid), ck, sections, False, False, **kw
            )
            cases["baseline_levers"] = partial(
                run_isolated, baseline_case, scan, uid, str(out / "baseline_levers" / uid), ck, sections, True, **kw
            )
            if area_fits:  # the anti-aliasing choice: data.antialias area vs gaussian
                cases["pivot_area"] = partial(
                    run_isolated, pivot_case, scan, str(out / "pivot_area" / uid), ck, area, False, **kw
                )
            if cpu_has_native_bf16():  # the --amp lever where it pays (AMX / AVX512-BF16)
                cases["pivot_bf16"] = partial(
                    run_isolated, pivot_case, scan, str(out / "pivot_bf16" / uid), ck, sections, False, None, True,
                    **kw,
                )  # fmt: skip
        for name, results in alternate(cases, repeats).items():
            per[name][uid] = results
        if tta:
            per["pivot_tta"][uid] = [
                run_isolated(pivot_case, scan, str(out / "tta" / uid), str(checkpoint), sections, True, **kw)
            ]
        logger.info(
            "%s: pivot %.1f s / %.0f MB, baseline %.1f s / %.0f MB%s",
            uid[-12:],
            median([r.value["seconds"] for r in per["pivot"][uid]]),
            max(r.peak_rss_mb for r in per["pivot"][uid]),
            median([r.value["seconds"] for r in per["baseline"][uid]]),
            max(r.peak_rss_mb for r in per["baseline"][uid]),
            f", TTA {per['pivot_tta'][uid][0].value['seconds']:.1f} s" if tta else "",
        )
    uids = list(scan_paths)
    folder: dict[str, list[CaseResult]] = {}
    if not args.quick and len(scan_paths) > 1:  # what `pivot infer <folder>` sees: one process, model loaded once
        scans = list(scan_paths.values())
        folder = alternate(
            {
                "pivot": partial(run_isolated, pivot_case, scans, str(out / "folder_pivot"), ck, sections, False, **kw),
                "baseline": partial(
                    run_isolated, baseline_folder_case, scans, str(out / "folder_baseline"), ck, sections, **kw
                ),
            },
            repeats,
        )
    summary: dict[str, dict[str, Any]] = {}
    for name, by_uid in per.items():
        if not by_uid:
            continue
        froc = _froc(by_uid, raw_dir, uids)
        summary[name] = {
            "seconds_per_scan": float(np.mean([median([r.value["seconds"] for r in by_uid[u]]) for u in uids])),
            "peak_rss_mb": max(r.peak_rss_mb for u in uids for r in by_uid[u]),
            "stage_seconds": {
                k: float(np.mean([median([r.value["stages"][k] for r in by_uid[u]]) for u in uids]))
                for k in by_uid[uids[0]][0].value["stages"]
            },
            "cpm": froc.cpm,
            "sensitivities": froc.sensitivities.tolist(),
            "n_nodules": froc.n_nodules,
            "scans": {
                u: {
                    "seconds": [r.value["seconds"] for r in by_uid[u]],
                    "peak_rss_mb": [r.peak_rss_mb for r in by_uid[u]],
                    "n_candidates": len(by_uid[u][0].value["candidates"]),
                    **{k: by_uid[u][0].value[k] for k in ("stages", "volume") if k in by_uid[u][0].value},
                }
                for u in uids
            },
        }
    if folder:
        summary["folder"] = {
            name: {"seconds_per_scan": median([r.value["seconds"] for r in results]),
                   "peak_rss_mb": max(r.peak_rss_mb for r in results),
                   "seconds": [r.value["seconds"] for r in results]}
            for name, results in folder.items()
        }  # fmt: skip
    rows = _rows(summary, size, args.quick, trained)
    settings = {
        "quick": args.quick,
        "size": size,
        "scans": scans,
        "seed": args.seed,
        "repeats": repeats,
        "config": str(args.config),
        "overrides": QUICK_OVERRIDES if args.quick else {},
        "checkpoint": str(checkpoint),
        "trained": trained,
        "threads": args.threads,
        "data": sections["data"],
        "model": sections["model"],
        "inference": sections["inference"],
        "device": sections.get("device", {}),
    }
    write_results(NAME, rows, summary, settings)
    return rows


def _fixed(side: Mapping[str, Any]) -> float:
    """Seconds per scan outside the network: the floor no window choice can lower."""
    return float(sum(v for k, v in side["stage_seconds"].items() if k != "network"))


def _rows(summary: Mapping[str, Mapping[str, Any]], size: str, quick: bool, trained: bool) -> list[Row]:
    a, b = summary["pivot"], summary["baseline"]
    tag = " [small scan, 4 mm: quick]" if quick else f" [{size}]"
    cpm = "CPM" if trained else "CPM [random weights]"
    rows = [
        Row(NAME, f"s/scan .mhd->candidates.csv{tag}", a["seconds_per_scan"], b["seconds_per_scan"],
            "" if quick else f"<= {TARGET_SECONDS:g}"),
        Row(NAME, "speed-up vs plain MONAI sliding window (x)", b["seconds_per_scan"] / a["seconds_per_scan"],
            target="" if quick else f">= {TARGET_SPEEDUP:g}"),
        Row(NAME, "network s/scan (inference.roi_size windows in the lung box vs patch windows over the scan)",
            a["stage_seconds"]["network"], b["stage_seconds"]["network"]),
        Row(NAME, "read + preprocess + decode s/scan", _fixed(a), _fixed(b)),
        Row(NAME, f"peak RSS MB{tag}", a["peak_rss_mb"], b["peak_rss_mb"], "" if quick else f"<= {TARGET_RSS_MB:g}"),
        Row(NAME, cpm, a["cpm"], b["cpm"], ">= baseline" if trained and not quick else ""),
    ]  # fmt: skip
    if "pivot_no_reuse" in summary:
        n, r = summary["pivot_no_reuse"], summary["baseline_levers"]
        rows += [
            Row(NAME, "PIVOT s/scan: device.reuse_freed_memory on (default) vs off", a["seconds_per_scan"],
                n["seconds_per_scan"]),
            Row(NAME, "PIVOT network s/scan: reuse on vs off", a["stage_seconds"]["network"],
                n["stage_seconds"]["network"]),
            Row(NAME, "baseline s/scan: with channels_last_3d + reuse_freed_memory vs plain", r["seconds_per_scan"],
                b["seconds_per_scan"]),
            Row(NAME, "speed-up vs the baseline given channels_last_3d + reuse_freed_memory too (x)",
                r["seconds_per_scan"] / a["seconds_per_scan"]),
        ]  # fmt: skip
    if "pivot_fpr" in summary:
        c = summary["pivot_fpr"]
        rows += [
            Row(NAME, f"s/scan, detector + FP-reduction classifier vs detector only{tag}", c["seconds_per_scan"],
                a["seconds_per_scan"], "" if quick else f"<= {TARGET_FPR_SECONDS:g}"),
            Row(NAME, "peak RSS MB, detector + classifier vs detector only", c["peak_rss_mb"], a["peak_rss_mb"],
                "" if quick else f"<= {TARGET_RSS_MB:g}"),
            Row(NAME, "speed-up of detector + classifier vs plain MONAI sliding window, detector only (x)",
                b["seconds_per_scan"] / c["seconds_per_scan"], target="" if quick else f">= {TARGET_SPEEDUP:g}"),
            Row(NAME, f"{cpm}: detector + classifier vs detector only", c["cpm"], a["cpm"]),
        ]  # fmt: skip
    if "pivot_area" in summary:
        g = summary["pivot_area"]
        rows += [
            Row(NAME, "PIVOT preprocess s/scan: data.antialias area vs gaussian (default)",
                g["stage_seconds"]["preprocess"], a["stage_seconds"]["preprocess"]),
            Row(NAME, "PIVOT s/scan: antialias area vs gaussian", g["seconds_per_scan"], a["seconds_per_scan"]),
            Row(NAME, f"{cpm}: antialias area vs gaussian", g["cpm"], a["cpm"]),
        ]  # fmt: skip
    if "pivot_bf16" in summary:
        h = summary["pivot_bf16"]
        rows += [
            Row(NAME, "PIVOT s/scan: --amp (bf16, native on this CPU) vs default float32", h["seconds_per_scan"],
                a["seconds_per_scan"]),
            Row(NAME, "PIVOT network s/scan: --amp bf16 vs float32", h["stage_seconds"]["network"],
                a["stage_seconds"]["network"]),
            Row(NAME, "CPM: --amp bf16 vs float32", h["cpm"], a["cpm"]),
            Row(NAME, "speed-up vs plain MONAI with --amp (x)", b["seconds_per_scan"] / h["seconds_per_scan"]),
        ]  # fmt: skip
    if "folder" in summary:
        f = summary["folder"]
        rows += [
            Row(NAME, "s/scan, all scans in one process (pivot infer <folder>)", f["pivot"]["seconds_per_scan"],
                f["baseline"]["seconds_per_scan"]),
            Row(NAME, "speed-up, all scans in one process (x)",
                f["baseline"]["seconds_per_scan"] / f["pivot"]["seconds_per_scan"]),
        ]  # fmt: skip
    if "pivot_tta" in summary:
        t = summary["pivot_tta"]
        rows += [
            Row(NAME, f"TTA s/scan (baseline: no TTA){tag}", t["seconds_per_scan"], a["seconds_per_scan"]),
            Row(NAME, "TTA peak RSS MB (baseline: no TTA)", t["peak_rss_mb"], a["peak_rss_mb"]),
            Row(NAME, f"TTA {cpm} (baseline: no TTA)", t["cpm"], a["cpm"]),
        ]
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
