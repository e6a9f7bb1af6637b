"""Shared benchmark machinery: machine info, result rows and JSON files, timing, per-case peak memory, test data.

Every benchmark module returns a list of :class:`Row` (one line of the ``run_all`` table) and writes
``benchmarks/results/<name>.json`` with :func:`write_results`, which records the machine (CPU model, cores, load),
torch/MONAI versions and the git commit next to the rows and the raw measurements.

Comparisons run both sides in the same process tree, alternating (:func:`alternate`), and report medians.
Peak memory is measured per case in a **fresh process** (:func:`run_isolated`): a child forked from a
``forkserver`` that has imported torch, MONAI, SimpleITK and PIVOT but never run anything, so each case starts with
the memory of a freshly started ``pivot`` process (about 0.35 GB of libraries) and pays no import time.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CHECKPOINT",
    "DEMO_CONFIG",
    "NETWORK_PROFILES",
    "QUICK_OVERRIDES",
    "REPO_ROOT",
    "RESULTS_DIR",
    "WORK_DIR",
    "CaseResult",
    "Row",
    "alternate",
    "checkpoint_clashes",
    "ensure_raw_dataset",
    "format_table",
    "froc_on_raw",
    "load_profile",
    "machine_info",
    "median",
    "peak_rss_mb",
    "resolve_checkpoint",
    "run_isolated",
    "setup_logging",
    "write_results",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK_DIR = REPO_ROOT / "benchmarks" / "work"  # git-ignored: generated scans, processed data, run outputs
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CONFIG_DIR = REPO_ROOT / "bundle" / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
NETWORK_PROFILES = {"demo": DEMO_CONFIG, "default": CONFIG_DIR / "train.yaml"}
"""The two networks the compute and GPU benchmarks measure: ``make demo``'s and ``train.yaml``'s."""
QUICK_OVERRIDES = {"data#target_spacing": [4.0, 4.0, 4.0], "data#patch_size": [32, 32, 32]}
"""``--quick`` sizes of the benchmarks that run the pipeline: 4 mm voxels, 32^3 patches."""
DEFAULT_CHECKPOINT = REPO_ROOT / "bundle" / "models" / "model.pt"

# imported once by the fork server, so isolated cases start warm (but have run nothing: OpenMP stays fork-safe).
# pivot_monai itself is imported by each case, as by a fresh `pivot infer` process: pivot_monai.data.io.value_range
# uses torch only in the process that imported it, and numpy (0.013 s slower per fullsize scan) in forked children
_PRELOAD = ["numpy", "SimpleITK", "torch", "monai"]


def setup_logging(verbose: bool = False) -> None:
    """The PIVOT log format (``pivot_monai.cli.setup_logging``)."""
    from pivot_monai.cli import setup_logging as pivot_setup_logging

    pivot_setup_logging(verbose)


# ---------------------------------------------------------------------------------------------------- rows and files
@dataclass
class Row:
    """One line of the results table.

    ``ratio`` is ``value / baseline`` when both exist. ``target`` is ``"<= X"``, ``">= X"``, ``">= baseline"`` or
    ``"<= baseline"`` (compared with ``value``), or empty for a number that is only reported.

    Attributes:
        benchmark: module name, e.g. ``inference``.
        metric: what is measured, with its unit.
        value: the measured value (``None`` when it could not be measured).
        baseline: the value of the baseline measured in the same run, if any.
        target: the target, see above.
        note: short remark (shown in the JSON only).
    """

    benchmark: str
    metric: str
    value: float | None
    baseline: float | None = None
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0 or not _finite(self.value, self.baseline):
            return None
        return float(self.value) / float(self.baseline)

    @property
    def passed(self) -> bool | None:
        """Whether ``value`` meets ``target`` (``None`` without a target or a value)."""
        if not self.target or self.value is None or not _finite(self.value):
            return None if not self.target else False
        op, operand = self.target.split(maxsplit=1)
        if operand == "baseline":
            if self.baseline is None or not _finite(self.baseline):
                return None
            ref = float(self.baseline)
        else:
            ref = float(operand)
        if op not in ("<=", ">="):
            raise ValueError(f"Row target must start with '<=' or '>=', got {self.target!r}")
        return float(self.value) <= ref if op == "<=" else float(self.value) >= ref

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table: benchmark, metric, value, baseline, ratio, target, pass/fail."""
    header = ("benchmark", "metric", "value", "baseline", "ratio", "target", "pass")
    verdict = {True: "pass", False: "FAIL", None: "-"}
    cells = [
        (r.benchmark, r.metric, _fmt(r.value), _fmt(r.baseline), _fmt(r.ratio), r.target or "-", verdict[r.passed])
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |" for cell in cells]
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, load, thread settings, library versions and git commit."""
    import monai
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        "cpu_model": _cpu_model(),
        # the VM's host CPU changes between days (AVX2 only, or AVX-512 with AMX): speed and bf16 depend on it
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": sorted(k for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "amx_fp16") if caps.get(k)),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": _memory_gb(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def write_results(name: str, rows: Sequence[Row], details: Mapping[str, Any], settings: Mapping[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``: machine, settings, rows and the raw measurements."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": dict(settings),
        "rows": [r.to_dict() for r in rows],
        "details": dict(details),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    tmp.replace(path)
    logger.info("results -> %s", path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


# ---------------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    """Median, NaN for an empty sequence."""
    return float(statistics.median(values)) if len(values) else math.nan


def alternate(cases: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 0) -> dict[str, list[Any]]:
    """Call every case ``repeats`` times, interleaved, rotating the order each round (a b, b a, ...).

    Args:
        cases: name -> zero-argument callable returning the measurement (e.g. seconds or a :class:`CaseResult`).
        repeats: measured rounds.
        warmup: rounds run first and discarded. Default 0.

    Returns:
        name -> the ``repeats`` measurements in round order.
    """
    names = list(cases)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for rnd in range(warmup + repeats):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            value = cases[name]()
            if rnd >= warmup:
                out[name].append(value)
    return out


# ---------------------------------------------------------------------------------------------------- isolation
def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0**2 if sys.platform == "darwin" else rss / 1024.0


@dataclass
class CaseResult:
    """What an isolated case returned, its wall time inside the child and the child's peak RSS."""

    value: Any
    seconds: float
    peak_rss_mb: float


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _importable(fn: Callable) -> Callable:
    """``fn``, or when it lives in ``__main__`` (``python -m benchmarks.x``) the same function by module name."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise ValueError(f"{fn.__name__}: run benchmarks with `python -m benchmarks.<name>` so cases can be imported")
    import importlib

    return getattr(importlib.import_module(spec.name), fn.__name__)


def _child(conn: Any, fn: Callable, args: tuple, kwargs: dict, threads: int | None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        conn.send(("ok", value, seconds, peak_rss_mb()))
    except BaseException:  # noqa: BLE001 - report anything to the parent, which raises it
        conn.send(("error", traceback.format_exc(), 0.0, peak_rss_mb()))
    finally:
        conn.close()


def run_isolated(
    fn: Callable, *args: Any, threads: int | None = None, timeout: float | None = None, **kwargs: Any
) -> CaseResult:
    """Run ``fn(*args, **kwargs)`` in a fresh process; return its value, wall time and that process's peak RSS.

    Args:
        fn: a module-level function (it is pickled by name).
        *args: its positional arguments (picklable).
        threads: ``torch.set_num_threads`` in the child; ``None`` keeps the default (``OMP_NUM_THREADS``).
        timeout: seconds before the child is killed. Default: no limit.
        **kwargs: its keyword arguments (picklable).

    Raises:
        RuntimeError: the case raised (the child's traceback is in the message) or the process died (e.g. killed
            for memory).
        TimeoutError: it ran past ``timeout``.
    """
    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(writer, _importable(fn), args, kwargs, threads), daemon=True)
    proc.start()
    writer.close()
    try:
        if not reader.poll(timeout):
            proc.kill()
            raise TimeoutError(f"{fn.__name__} ran past {timeout} s; killed")
        status, value, seconds, peak = reader.recv()
    except EOFError as err:
        proc.join()
        raise RuntimeError(
            f"{fn.__name__}: the benchmark process died with exit code {proc.exitcode} (killed for memory?)"
        ) from err
    finally:
        reader.close()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its benchmark process:\n{value}")
    return CaseResult(value, float(seconds), float(peak))


# ---------------------------------------------------------------------------------------------------- data and models
def ensure_raw_dataset(size: str, num_scans: int, seed: int, domain: str = "train") -> Path:
    """A synthetic raw dataset under ``benchmarks/work/``, generated once and reused by later runs.

    Args:
        size: ``small``, ``medium`` or ``fullsize`` (see :mod:`pivot_monai.data.synthetic`).
        num_scans: number of scans.
        seed: dataset seed; benchmarks evaluate on seeds >= 1000, never used for training (``make demo`` uses 0).
        domain: generator domain, ``train`` or ``heldout``. Default ``train``.

    Returns:
        The dataset root (``subset0/*.mhd``, ``annotations.csv``, ``annotations_excluded.csv``, ``seriesuids.csv``).
    """
    from pivot_monai.data.synthetic import GENERATOR_VERSION, dataset_is_current, generate_dataset

    tag = "" if domain == "train" else f"_{domain}"
    root = WORK_DIR / f"raw_{size}{tag}_seed{seed}_n{num_scans}_v{GENERATOR_VERSION}"
    if dataset_is_current(root, num_scans, seed, size, domain=domain):
        return root
    logger.info("generating %d %s %s-domain scan(s) (seed %d) into %s", num_scans, size, domain, seed, root)
    start = time.perf_counter()
    generate_dataset(root, num_scans, seed=seed, size=size, domain=domain, workers=2)
    logger.info("generated in %.1f s", time.perf_counter() - start)
    return root


def ensure_training_split(
    seed: int, num_scans: int, config: str | Path, overrides: Mapping[str, Any] | None = None
) -> tuple[Path, dict[str, list[str]]]:
    """Small synthetic scans of ``seed`` preprocessed with the ``data`` section of ``config`` and split 70/15/15.

    Generated and preprocessed once under ``benchmarks/work/`` (finished scans are skipped on reruns; the split is
    seeded, so relinking it gives the same split).

    Returns:
        (the processed dataset root with ``train``/``val``/``test``, the split's seriesuids per key).
    """
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.data.raw_dataset import preprocess_dataset
    from pivot_monai.data.splits import create_splits

    raw = ensure_raw_dataset("small", num_scans, seed)
    data = load_profile(config, overrides)["data"]
    spacing = "x".join(f"{v:g}" for v in data["target_spacing"])
    processed = WORK_DIR / f"processed_{raw.name}_{Path(config).stem}_{spacing}mm"
    preprocess_dataset(raw, processed, PreprocessConfig.from_data_section(data), workers=2)
    return processed, create_splits(processed, 0.7, 0.15, 0.15, seed=seed)


def froc_on_raw(candidates: Mapping[str, Any], raw_dir: Path) -> Any:
    """FROC of ``{seriesuid: ScanCandidates}`` against the annotations of the raw dataset at ``raw_dir``."""
    from pivot_monai.data.raw_dataset import discover_raw_dataset
    from pivot_monai.metrics import compute_froc

    raw = discover_raw_dataset(raw_dir)
    return compute_froc(dict(candidates), raw.annotations, list(candidates), raw.excluded)


def load_profile(config: str | Path | None, overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The guide sections ``data``, ``model``, ``inference`` and ``training`` of ``train.yaml`` + ``config``.

    Args:
        config: override file layered over ``bundle/configs/train.yaml`` (e.g. ``demo.yaml``), or ``None``.
        overrides: ``section#key`` values set on top (e.g. the ``--quick`` sizes).
    """
    from pivot_monai.config import load_sections

    sections = load_sections(config, ("data", "model", "inference", "training", "device"))
    for key, value in (overrides or {}).items():
        section, _, name = key.partition("#")
        sections[section][name] = value
    return sections


def checkpoint_clashes(path: Path, sections: Mapping[str, Any] | None) -> list[str]:
    """Binding keys (preprocessing, network) where ``sections`` differ from what the model at ``path`` recorded."""
    if sections is None:
        return []
    from pivot_monai.inference.model_settings import contradictions
    from pivot_monai.networks.metadata import read_metadata

    meta = read_metadata(path)
    return contradictions(sections, meta.get("config", {})) if meta else []


def resolve_checkpoint(
    checkpoint: str | Path | None, model_cfg: Mapping[str, Any], sections: Mapping[str, Any] | None = None
) -> tuple[Path, bool]:
    """The checkpoint to benchmark, or seeded random weights saved under ``benchmarks/work/`` when there is none.

    A self-describing model that was trained on other preprocessing or another network than ``sections`` (``--quick``
    runs at 4 mm; ``make demo``'s model at 1.5 mm) would be refused by the predictor: the default checkpoint is then
    passed over for random weights, with a warning; one given with ``--checkpoint`` is an error.

    Args:
        checkpoint: ``--checkpoint`` (``None``: ``make demo``'s ``bundle/models/model.pt``).
        model_cfg: the benchmark's ``model`` section (for the random weights).
        sections: the benchmark's config sections, checked against what the model recorded.

    Returns:
        (path, trained): ``trained`` is False for the random weights, whose CPM means nothing.

    Raises:
        ValueError: ``checkpoint`` was trained with other binding settings than ``sections``.
    """
    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    reason = f"no usable checkpoint at {path}"
    if path.is_file():
        clashes = checkpoint_clashes(path, sections)
        if not clashes:
            return path, True
        if checkpoint:
            raise ValueError(f"--checkpoint {path} does not fit this benchmark's settings: {'; '.join(clashes)}")
        reason = f"{path} does not fit this benchmark's settings ({'; '.join(clashes)})"
    import torch

    from pivot_monai.networks import build_network

    torch.manual_seed(0)
    state = build_network(dict(model_cfg)).state_dict()
    tag = "_".join(f"{k}{model_cfg.get(k)}" for k in ("base_filters", "depth", "output_stride"))
    out = WORK_DIR / f"random_weights_{tag}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    logger.warning(
        "%s (train one with `make demo` or pass --checkpoint): using random weights %s; "
        "speed and memory are valid, CPM and the other quality numbers are meaningless",
        reason,
        out,
    )
    return out, False
