"""Training the false-positive-reduction classifier on the detector's own candidates.

:func:`train_classifier` (``pivot train-fpr``, or the ``fpr.yaml`` bundle) builds its training set from a split of
training scans (a processed split such as ``data/processed/train``, or a raw LUNA16-style folder):

* the detector's candidates on those scans -- read from a candidates CSV, or computed by running the detector
  checkpoint through the inference pipeline -- labelled by the LUNA16 hit rule
  (:func:`~pivot_monai.inference.fpr.candidate_labels`): hits are positives, every other candidate a negative (the
  vessel cross-sections, pleural bumps and fissure crossings the detector mistakes for nodules), candidates on
  excluded findings are left out. Per scan only the ``fpr.max_negatives_per_scan`` most probable negatives are kept:
  the ones that decide the FROC curve at 1/8-8 FP/scan;
* ``fpr.positives_per_nodule`` extra positives per true nodule, at its centre shifted by up to
  ``fpr.positive_jitter_mm`` (never beyond a quarter of its diameter), so nodules the detector missed are learnt too.
* with ``fpr.positive_sampling: contrast``, batches draw each positive with the weight of its nodule's contrast to
  the tissue around it (:func:`nodule_contrast_at`, weighted as the detector's ``data.positive_sampling: contrast``
  by :func:`~pivot_monai.transforms.sampling.contrast_weight` with ``fpr.positive_contrast_hu``): faint ground-glass
  and part-solid nodules, which the classifier otherwise sees as rarely as they occur, are learnt up to 3x as often.

Patches are cut once (:func:`~pivot_monai.inference.fpr.extract_patches`, kept as uint8) and augmented on the fly
with the 16 flips and axial quarter turns of a cube that keep z (``fpr.augment``). Batches draw positives with
probability ``fpr.positive_fraction``; the loss is binary cross-entropy. The checkpoint (``fpr.pt``, next to the
detector by default) and ``fpr_report.json`` beside it record the settings, counts, losses and timings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.preprocess import PreprocessConfig, preprocess_image, read_for_preprocessing
from pivot_monai.inference.classify import read_candidates_csv
from pivot_monai.inference.fpr import (
    CLASSIFIER_NAME,
    CandidateClassifier,
    FPRSettings,
    _offsets,
    candidate_labels,
    extract_patches,
    load_fpr_config,
)
from pivot_monai.metrics.froc import write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates
from pivot_monai.networks.classifier import MultiScaleClassifier
from pivot_monai.transforms.sampling import contrast_weight

__all__ = [
    "TrainingSet",
    "augment_batch",
    "build_training_set",
    "detector_candidates",
    "draw_batch",
    "nodule_contrast_at",
    "train_classifier",
]

logger = logging.getLogger(__name__)

TRAIN_CANDIDATES_NAME = "fpr_train_candidates.csv"


class TrainingSet:
    """Patches and labels of the classifier's training set.

    Attributes:
        patches: (N, S, G, G, G) uint8 patches (intensity * 255).
        labels: (N,) float32, 1 nodule, 0 false positive.
        origin: (N,) where each sample came from: ``"hit"``, ``"fp"`` or ``"nodule"`` (a jittered true centre).
        weights: (N,) float64 draw weight of each positive among the positives (1 for all with
            ``fpr.positive_sampling: uniform``; negatives 1, unused).
    """

    def __init__(
        self, patches: torch.Tensor, labels: np.ndarray, origin: list[str], weights: np.ndarray | None = None
    ) -> None:
        self.patches, self.labels, self.origin = patches, np.asarray(labels, dtype=np.float32), list(origin)
        self.weights = np.ones(len(self.labels)) if weights is None else np.asarray(weights, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.labels.size)

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, G, G, G) float patches in [0, 1] and (B,) labels of the samples ``index``."""
        x = self.patches[torch.as_tensor(index)].float().div_(255.0)
        return x, torch.from_numpy(self.labels[index])


def augment_batch(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each sample flipped along random axes and turned by a random quarter turn in the axial (x, y) plane.

    The same transform applies to all scales of a sample (channel axis 1); spatial axes are 2, 3, 4 = x, y, z.
    """
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        sample = x[i]
        flips = [d + 1 for d in range(3) if rng.random() < 0.5]
        if flips:
            sample = torch.flip(sample, flips)
        if rng.random() < 0.5:
            sample = sample.transpose(1, 2)
        out[i] = sample
    return out


def _processed_image(case: Any, preprocess: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """The processed image of an evaluation case: ``image.nii.gz`` of a processed split, else preprocessed here."""
    image_path = case.label.parent / "image.nii.gz" if case.label is not None else None
    if image_path is not None and image_path.exists():
        image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(image).transpose(2, 1, 0), Geometry.from_sitk(image)
    scan = preprocess_image(read_for_preprocessing(case.scan, preprocess), preprocess)
    return scan.image, scan.geometry


def detector_candidates(cases: list[Any], detector: Any, settings: Any) -> dict[str, ScanCandidates]:
    """The detector's candidates on every case (scans that fail are logged and left out)."""
    from pivot_monai.inference.pipeline import InferencePipeline
    from pivot_monai.inference.predictor import Predictor

    pipeline = InferencePipeline(Predictor.from_settings(detector, settings), settings)
    items = [{"image": str(c.scan), "seriesuid": c.seriesuid} for c in cases]
    return {item["seriesuid"]: r.candidates for item, r in pipeline.predict_many(items) if not isinstance(r, str)}


def _jittered_centres(nodule: Any, count: int, jitter_mm: float, rng: np.random.Generator) -> np.ndarray:
    radius = min(float(jitter_mm), 0.25 * max(float(nodule.diameter_mm), 0.0))
    direction = rng.normal(size=(count, 3))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    return np.asarray(nodule.world, dtype=np.float64) + direction * radius * rng.random((count, 1)) ** (1 / 3)


def nodule_contrast_at(
    image: np.ndarray,
    geometry: Geometry,
    nodules: list[Any],
    hu_window: tuple[float, float] | list[float],
    grid: int = 24,
) -> np.ndarray:
    """Contrast (HU) of each annotated nodule to a shell of tissue around it, from its centre and diameter alone.

    The label map of a processed split is not needed, so this works on any scan with an ``annotations.csv``. Around
    each centre a world-axis cube of edge ``2 (r + t)``, ``t = max(2.5 mm, r / 2)``, is resampled to ``grid``^3
    (:func:`~pivot_monai.inference.fpr.extract_patches`); the contrast is the mean of the points within ``r`` of the
    centre less that of the points between ``r + 1 mm`` and ``r + t``, scaled from the [0, 1] window back to HU.

    Args:
        image: (X, Y, Z) processed intensities in [0, 1].
        geometry: its geometry.
        nodules: :class:`~pivot_monai.data.annotations.Nodule` s (``world``, ``diameter_mm``).
        hu_window: ``data.hu_window`` the image was scaled from.
        grid: resampled voxels per cube edge. Default 24.

    Returns:
        (len(nodules),) contrasts in HU (``nan`` for a nodule without a positive diameter).
    """
    width = float(hu_window[1]) - float(hu_window[0])
    out = np.full(len(nodules), np.nan)
    for i, nodule in enumerate(nodules):
        r = 0.5 * float(nodule.diameter_mm)
        if not r > 0:
            continue
        t = max(2.5, 0.5 * r)
        fov = 2.0 * (r + t)
        cube = extract_patches(image, geometry, np.asarray([nodule.world], dtype=np.float64), [fov], grid)[0, 0]
        o = _offsets(fov, grid)
        dist = np.sqrt(o[:, None, None] ** 2 + o[None, :, None] ** 2 + o[None, None, :] ** 2)
        inside, shell = dist <= r, (dist > r + 1.0) & (dist <= r + t)
        values = cube.numpy()
        if inside.any() and shell.any():
            out[i] = (values[inside].mean() - values[shell].mean()) * width
    return out


def build_training_set(
    cases: list[Any],
    candidates: Mapping[str, ScanCandidates],
    fpr: FPRSettings,
    preprocess: PreprocessConfig,
) -> TrainingSet:
    """Label the candidates, add jittered true nodules, and cut their patches (module docstring).

    Raises:
        ValueError: the set has no positive or no negative sample.
    """
    rng = np.random.default_rng(fpr.seed)
    patches, labels, origin, weights = [], [], [], []
    for case in cases:
        cands = candidates.get(case.seriesuid)
        world = np.zeros((0, 3)) if cands is None else cands.world
        prob = np.zeros(0) if cands is None else cands.probability
        lab = candidate_labels(world, case.nodules, case.excluded)
        neg = np.flatnonzero(lab == 0)
        neg = neg[np.argsort(-prob[neg], kind="stable")][: fpr.max_negatives_per_scan]
        hit = np.flatnonzero(lab == 1)
        extra = [_jittered_centres(n, fpr.positives_per_nodule, fpr.positive_jitter_mm, rng) for n in case.nodules]
        points = np.concatenate([world[hit], world[neg], *extra]).reshape(-1, 3)
        if not len(points):
            continue
        image, geometry = _processed_image(case, preprocess)
        cut = extract_patches(image, geometry, points, fpr.fov_mm, fpr.grid)
        patches.append(cut.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8))
        n_extra = len(points) - hit.size - neg.size
        labels += [1.0] * hit.size + [0.0] * neg.size + [1.0] * n_extra
        origin += ["hit"] * hit.size + ["fp"] * neg.size + ["nodule"] * n_extra
        per_nodule = _per_nodule_weights(image, geometry, case.nodules, fpr, preprocess)
        weights += [*_hit_weights(world[hit], case.nodules, per_nodule), *[1.0] * neg.size]
        weights += list(np.repeat(per_nodule, fpr.positives_per_nodule))  # the jittered centres, nodule by nodule
    labels_arr = np.asarray(labels, dtype=np.float32)
    if not labels_arr.size or labels_arr.min() == labels_arr.max():
        raise ValueError(
            f"the classifier needs positives and negatives, got {int(labels_arr.sum())} positive and "
            f"{int((labels_arr == 0).sum())} negative samples; train on scans with nodules and with detector candidates"
        )
    return TrainingSet(torch.cat(patches), labels_arr, origin, np.asarray(weights, dtype=np.float64))


def _per_nodule_weights(
    image: np.ndarray, geometry: Geometry, nodules: list[Any], fpr: FPRSettings, preprocess: PreprocessConfig
) -> np.ndarray:
    """Draw weight of each nodule's positives: its contrast weight, or 1 with ``fpr.positive_sampling: uniform``."""
    if fpr.positive_sampling != "contrast" or not nodules:
        return np.ones(len(nodules))
    contrast = nodule_contrast_at(image, geometry, nodules, preprocess.hu_window)
    return contrast_weight(contrast, fpr.positive_contrast_hu)


def _hit_weights(hits: np.ndarray, nodules: list[Any], per_nodule: np.ndarray) -> np.ndarray:
    """Weight of each hit ``hits`` (H, 3) world mm: that of the nearest nodule (a hit lies within its radius)."""
    if not len(hits) or not nodules:
        return np.ones(len(hits))
    centres = np.asarray([n.world for n in nodules], dtype=np.float64)
    return per_nodule[np.argmin(np.linalg.norm(hits[:, None, :] - centres[None], axis=-1), axis=1)]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties counted half)."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def draw_batch(
    rng: np.random.Generator,
    pos: np.ndarray,
    neg: np.ndarray,
    batch_size: int,
    positive_fraction: float,
    p_pos: np.ndarray | None = None,
) -> np.ndarray:
    """Sample indices of one batch: ``Binomial(batch_size, positive_fraction)`` positives drawn from ``pos`` with
    probabilities ``p_pos`` (None: uniformly), the rest uniformly from ``neg``; both with replacement."""
    n_pos = rng.binomial(batch_size, positive_fraction)
    return np.r_[rng.choice(pos, n_pos, p=p_pos), rng.choice(neg, batch_size - n_pos)]


def _fit(data: TrainingSet, fpr: FPRSettings, device: torch.device) -> tuple[MultiScaleClassifier, list[float]]:
    """Train the network; returns it (eval mode) and the mean loss of each epoch."""
    torch.manual_seed(fpr.seed)
    rng = np.random.default_rng(fpr.seed)
    net = MultiScaleClassifier(**fpr.network_kwargs()).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=fpr.learning_rate, weight_decay=fpr.weight_decay)
    steps = max(1, math.ceil(len(data) / fpr.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, fpr.epochs * steps))
    pos, neg = np.flatnonzero(data.labels == 1), np.flatnonzero(data.labels == 0)
    # uniform draws keep rng.choice without p, so the uniform default trains exactly as before weights existed
    p_pos = None if fpr.positive_sampling == "uniform" else data.weights[pos] / data.weights[pos].sum()
    losses = []
    for epoch in range(fpr.epochs):
        net.train()
        total = 0.0
        for _ in range(steps):
            index = draw_batch(rng, pos, neg, fpr.batch_size, fpr.positive_fraction, p_pos)
            x, y = data.batch(index)
            if fpr.augment:
                x = augment_batch(x, rng)
            loss = F.binary_cross_entropy_with_logits(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        losses.append(round(total / steps, 5))
        logger.info("fpr epoch %d/%d: loss %.4f", epoch + 1, fpr.epochs, losses[-1])
    return net.eval(), losses


def _detector_keys(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The user's config without its ``fpr`` section: the keys that may contradict the detector's description."""
    from pivot_monai.config import expand_paths, load_layered

    if config is None:
        return None
    user = load_layered([config]) if isinstance(config, (str, Path)) else expand_paths(dict(config))
    return {k: v for k, v in user.items() if k != "fpr"}


def train_classifier(
    data_dir: str | Path,
    output: str | Path | None = None,
    *,
    candidates: str | Path | None = None,
    detector: Any = None,
    config: str | Path | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the candidate classifier on the detector's candidates of ``data_dir`` and save it.

    Args:
        data_dir: training scans: a processed split (``data/processed/train``) or a raw LUNA16-style folder.
        output: the checkpoint to write. Default: ``fpr.pt`` next to ``detector`` (a path), else required.
        candidates: the detector's candidates on ``data_dir`` (a LUNA16 CSV). Default: run ``detector`` on the
            scans (they are also written next to the checkpoint as ``fpr_train_candidates.csv``).
        detector: the detector checkpoint (``model.pt``), needed without ``candidates`` and recorded in the
            classifier checkpoint.
        config: the user's config (sections ``data``, ``model``, ``inference``, ``device``, ``fpr``), layered over
            ``train.yaml`` and ``fpr.yaml``. Default: the defaults.
        device: where the classifier (and the detector) run. Default CPU.

    Returns:
        The report (also ``fpr_report.json`` beside the checkpoint): counts, losses, training AUC, seconds, paths.

    Raises:
        ValueError: neither ``candidates`` nor ``detector``, no ``output``, or a set without both classes.
        FileNotFoundError: ``data_dir``, ``candidates`` or ``detector`` does not exist.
    """
    from pivot_monai.config import INFERENCE_SECTIONS
    from pivot_monai.inference.evaluate import discover_cases
    from pivot_monai.inference.model_settings import settings_for_model
    from pivot_monai.inference.settings import InferenceSettings

    if candidates is None and detector is None:
        raise ValueError("train_classifier needs the detector's candidates: pass candidates=CSV or detector=model.pt")
    if output is None:
        if not isinstance(detector, (str, Path)):
            raise ValueError("train_classifier: pass output=fpr.pt (there is no detector file to put it next to)")
        output = Path(detector).with_name(CLASSIFIER_NAME)
    out = Path(output)
    t0 = time.perf_counter()
    merged = load_fpr_config(config)
    fpr = FPRSettings.from_section(merged["fpr"])
    if isinstance(detector, (str, Path)):
        # the detector's own preprocessing and network (a self-describing model.pt), the user's keys over them; a
        # contradiction is an error naming the keys, as in pivot infer
        settings = settings_for_model(detector, _detector_keys(config), device=device)
    else:
        settings = InferenceSettings.from_config({k: merged.get(k) or {} for k in INFERENCE_SECTIONS}, device=device)
    cases = discover_cases(data_dir)
    if candidates is not None:
        cands, _ = read_candidates_csv(candidates)
    else:
        cands = detector_candidates(cases, detector, settings)
        write_submission_csv(out.with_name(TRAIN_CANDIDATES_NAME), cands)
    t1 = time.perf_counter()
    data = build_training_set(cases, cands, fpr, settings.preprocess)
    t2 = time.perf_counter()
    logger.info(
        "fpr training set: %d hits, %d false positives, %d jittered nodules from %d scans",
        data.origin.count("hit"), data.origin.count("fp"), data.origin.count("nodule"), len(cases),
    )  # fmt: skip
    net, losses = _fit(data, fpr, settings.device)
    t3 = time.perf_counter()
    name = Path(detector).name if isinstance(detector, (str, Path)) else None
    classifier = CandidateClassifier(net, fpr.fov_mm, fpr.grid, fpr.fusion_weight, settings.device, detector=name)
    with torch.no_grad():
        scores = torch.cat(
            [net(data.batch(np.arange(i, min(i + 256, len(data))))[0]) for i in range(0, len(data), 256)]
        )
    report = {
        "checkpoint": str(out),
        "data_dir": str(data_dir),
        "detector": None if detector is None else str(detector),
        "candidates": None if candidates is None else str(candidates),
        "n_scans": len(cases),
        "preprocess": settings.preprocess.to_dict(),  # the patches are cut from scans preprocessed like this
        "n_samples": {k: data.origin.count(k) for k in ("hit", "fp", "nodule")},
        # mean draw weight of the positives (1 unless fpr.positive_sampling: contrast) and the largest
        "positive_weights": {
            "mean": round(float(data.weights[data.labels == 1].mean()), 3),
            "max": round(float(data.weights[data.labels == 1].max()), 3),
        },
        "losses": losses,
        "train_auc": _auc(data.labels, scores.numpy()),
        "fpr": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(fpr).items()},
        "seconds": {"candidates": round(t1 - t0, 1), "patches": round(t2 - t1, 1), "training": round(t3 - t2, 1)},
    }
    classifier.save(out, fpr=report["fpr"])
    (out.parent / "fpr_report.json").write_text(json.dumps(report, indent=1))
    logger.info("classifier -> %s (training AUC %.3f, %.0f s)", out, report["train_auc"], time.perf_counter() - t0)
    return report
