"""Training throughput: patches/s of the bundle's training loop and the share of step time spent waiting for data.

Both arms run the real bundle (``train.yaml`` + ``demo.yaml`` through ``monai.bundle.ConfigWorkflow``, the same
workflow as ``make demo``) on a small synthetic processed dataset made under ``benchmarks/work/``, for
``--epochs`` epochs, alternating arm by arm for ``--repeats`` rounds:

* **cache** (default): ``CacheDataset`` (the deterministic transforms, loading included, cached in memory) +
  ``DataLoader`` (``data.num_workers`` workers) + ``SupervisedTrainer``;
* **plain** (baseline): ``monai.data.Dataset`` with the same transforms, so every step loads NIfTI again;
* **meta** (full mode): the cache arm with ``data.track_meta: true``, i.e. MONAI's MetaTensors through the crops and
  augmentations (the bundle's default is ``false``).

Ignite events time each iteration: data wait is ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED`` (ignite 0.5 fires
``ITERATION_STARTED`` only after ``GET_BATCH_COMPLETED``), the step is ``GET_BATCH_STARTED`` -> the end of
``ITERATION_COMPLETED`` (forward, backward, optimizer and the per-iteration handlers). The first iteration of a run
(worker start-up) is left out. Validation is disabled; cache building is reported as setup time.

Usage::

    python -m benchmarks.bench_training              # 8 scans, 3 epochs, 3 rounds
    python -m benchmarks.bench_training --quick      # 3 scans, 1 epoch, 1 round
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIG_DIR,
    DEMO_CONFIG,
    WORK_DIR,
    Row,
    alternate,
    ensure_raw_dataset,
    format_table,
    median,
    setup_logging,
    write_results,
)

__all__ = ["StepTimer", "main", "make_processed", "run_arm"]

logger = logging.getLogger(__name__)

NAME = "training"
TARGET_WAIT_PERCENT = 10.0
PLAIN_DATASET = {
    "_target_": "Dataset",
    "data": "$pivot_monai.engines.distributed.shard(@train#datalist, seed=@training#seed)",
    "transform": "@train#preprocessing",
}


class StepTimer:
    """Ignite handler timing the data wait and the whole step of every iteration (see module docstring)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.patches: list[int] = []
        self._start = self._got = 0.0
        self._n = 0

    def attach(self, engine: Any) -> None:
        """Register on ``engine``; attach after the other handlers so the step includes them."""
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _batch_started(self, engine: Any) -> None:
        self._start = time.perf_counter()

    def _batch_completed(self, engine: Any) -> None:
        self._got = time.perf_counter()
        batch = engine.state.batch
        image = batch.get("image") if isinstance(batch, Mapping) else batch[0]
        self._n = int(image.shape[0]) if hasattr(image, "shape") else len(image)

    def _iteration_completed(self, engine: Any) -> None:
        self.waits.append(self._got - self._start)
        self.steps.append(time.perf_counter() - self._start)
        self.patches.append(self._n)

    def summary(self, skip: int = 1) -> dict[str, Any]:
        """Patches/s, data-wait share and step statistics, leaving out the first ``skip`` iterations."""
        waits, steps, patches = self.waits[skip:], self.steps[skip:], self.patches[skip:]
        total = sum(steps)
        return {
            "iterations": len(steps),
            "patches_per_s": sum(patches) / total if total else float("nan"),
            "wait_percent": 100.0 * sum(waits) / total if total else float("nan"),
            "median_step_s": median(steps),
            "median_wait_s": median(waits),
            "first_step_s": self.steps[0] if self.steps else None,
            "patches_per_iteration": median(patches),
        }


def make_processed(num_scans: int, seed: int, config: Path) -> tuple[Path, Path]:
    """Small synthetic scans preprocessed with the profile's ``data`` section, and a datalist of all of them.

    Returns:
        (processed root, datalist JSON): every scan in ``training``, the first one in ``validation``.
    """
    from pivot_monai.config import load_section
    from pivot_monai.data.preprocess import PreprocessConfig
    from pivot_monai.data.raw_dataset import preprocess_dataset

    raw = ensure_raw_dataset("small", num_scans, seed)
    processed = WORK_DIR / f"processed_{raw.name}_{config.stem}"
    report = preprocess_dataset(raw, processed, PreprocessConfig.from_data_section(load_section("data", config)))
    if report["failed"]:
        raise RuntimeError(f"preprocessing {raw} failed: {report['failed']}")
    items = [
        {"image": f"{u}/image.nii.gz", "label": f"{u}/label.nii.gz", "meta": f"{u}/meta.json"}
        for u in sorted(p.parent.name for p in processed.glob("*/meta.json"))
    ]
    datalist = processed / "bench_datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": items[:1]}, indent=1))
    return processed, datalist


def run_arm(
    config: Path,
    processed: Path,
    datalist: Path,
    epochs: int,
    plain: bool,
    tag: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one arm through ``ConfigWorkflow`` and return its timings (``extra``: more ``#`` overrides)."""
    from monai.bundle import ConfigWorkflow

    overrides: dict[str, Any] = {
        "bundle_root": str(WORK_DIR / "train_runs" / tag),
        "dataset_dir": str(processed),
        "data#datalist": str(datalist),
        "training#epochs": epochs,
        "validation#interval": epochs + 1,  # no validation round inside the timed epochs
        "validate#dataset#cache_rate": 0.0,  # and no validation cache to build
        "logging#tensorboard": False,
        "checkpointing#save_best": False,
        "checkpointing#save_interval": 0,
    }
    if plain:
        overrides["train#dataset"] = dict(PLAIN_DATASET)
    overrides.update(extra or {})
    workflow = ConfigWorkflow(
        config_file=[str(CONFIG_DIR / "train.yaml"), str(config)],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        workflow_type="train",
        run_id="training",
        **overrides,
    )
    start = time.perf_counter()
    workflow.initialize()  # builds the datasets: CacheDataset caches here
    setup = time.perf_counter() - start
    trainer = workflow.parser.get_parsed_content("train#trainer")
    timer = StepTimer()
    timer.attach(trainer)
    start = time.perf_counter()
    workflow.run()
    run = time.perf_counter() - start
    workflow.finalize()
    dataset = type(workflow.parser.get_parsed_content("train#dataset")).__name__
    del workflow, trainer
    gc.collect()  # let the DataLoader's persistent workers go before the next arm
    result = {"setup_s": setup, "run_s": run, "dataset": dataset, **timer.summary()}
    logger.info(
        "%s (%s): %.2f patches/s, data wait %.1f %% of step, setup %.1f s",
        tag,
        dataset,
        result["patches_per_s"],
        result["wait_percent"],
        setup,
    )
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 scans, 1 epoch, 1 round")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="profile layered over train.yaml")
    p.add_argument("--scans", type=int, default=8, help="small synthetic training scans")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument("--epochs", type=int, default=3, help="epochs per arm and round")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, write ``benchmarks/results/training.json`` and return the table rows."""
    args = parse_args(argv)
    scans, epochs, repeats = (3, 1, 1) if args.quick else (args.scans, args.epochs, args.repeats)
    processed, datalist = make_processed(scans, args.seed, args.config)
    arms = {
        "cache": lambda: run_arm(args.config, processed, datalist, epochs, False, "cache"),
        "plain": lambda: run_arm(args.config, processed, datalist, epochs, True, "plain"),
    }
    if not args.quick:
        meta = {"data#track_meta": True}
        arms["meta"] = lambda: run_arm(args.config, processed, datalist, epochs, False, "meta", meta)
    runs = alternate(arms, repeats)

    def med(arm: str, key: str) -> float:
        return median([r[key] for r in runs[arm]])

    tag = f" [{scans} scans x {epochs} epoch(s)]"
    rows = [
        Row(NAME, f"patches/s (CacheDataset vs Dataset){tag}", med("cache", "patches_per_s"),
            med("plain", "patches_per_s"), ">= baseline"),
        Row(NAME, "data wait % of step (CacheDataset vs Dataset)", med("cache", "wait_percent"),
            med("plain", "wait_percent"), f"<= {TARGET_WAIT_PERCENT:g}"),
        Row(NAME, "median step s (CacheDataset vs Dataset)", med("cache", "median_step_s"),
            med("plain", "median_step_s")),
        Row(NAME, "setup s incl. cache build (CacheDataset vs Dataset)", med("cache", "setup_s"),
            med("plain", "setup_s")),
    ]  # fmt: skip
    if "meta" in runs:
        rows += [
            Row(NAME, "patches/s: data.track_meta false (default) vs true", med("cache", "patches_per_s"),
                med("meta", "patches_per_s")),
            Row(NAME, "data wait % of step: track_meta false vs true", med("cache", "wait_percent"),
                med("meta", "wait_percent")),
        ]  # fmt: skip
    settings = {"quick": args.quick, "config": str(args.config), "scans": scans, "seed": args.seed}
    settings.update(epochs=epochs, repeats=repeats)
    write_results(NAME, rows, {"runs": runs}, settings)
    return rows


if __name__ == "__main__":
    setup_logging()
    table = main()
    sys.stdout.write(format_table(table) + "\n")
