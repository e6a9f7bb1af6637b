"""False-positive reduction: re-scoring detector candidates with the multi-scale candidate classifier.

The second stage of a LUNA16 system. Each candidate (world mm) is cut out of the **processed** scan -- the
HU-windowed, lung-cropped, resampled image of :func:`~pivot_monai.data.preprocess.preprocess_image`, the very input
of the detector -- at several fields of view (``fpr.fov_mm``, e.g. 20, 32 and 48 mm), each resampled (trilinear) to
the same ``fpr.grid``^3 voxels, and :class:`~pivot_monai.networks.classifier.MultiScaleClassifier` scores the stack.

Patches are laid out along the **world** (LPS) axes, not the scan's index axes: patch axis 0 runs along +x (mm),
axis 1 along +y, axis 2 along +z, whatever the scan's spacing, origin and direction (flipped or oblique), so the
classifier sees every scan in one orientation. Outside the image a patch reads 0 (-1000 HU, air).

The fused probability of a candidate is ``detector ** (1 - w) * classifier ** w`` with ``w = fpr.fusion_weight``
(a weighted geometric mean: ``w = 0`` keeps the detector's score, ``w = 1`` is the classifier alone). Candidates are
re-sorted by it.

A classifier checkpoint (``fpr.pt``) is self-describing: ``{"model": state_dict, "network": kwargs, "patches":
{"fov_mm", "grid"}, "fusion_weight", "detector"}``. ``pivot infer`` and ``pivot evaluate`` use ``fpr.checkpoint``,
else ``fpr.pt`` next to the detector checkpoint when it exists (:func:`resolve_classifier`); ``--no-fpr`` turns it
off. Training: :mod:`pivot_monai.inference.fpr_train`; re-scoring a candidates file:
:mod:`pivot_monai.inference.classify`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pivot_monai.data.annotations import Nodule, world_array
from pivot_monai.data.geometry import Geometry
from pivot_monai.metrics.matching import UNKNOWN_DIAMETER_MM, ScanCandidates
from pivot_monai.networks.classifier import MultiScaleClassifier

__all__ = [
    "CLASSIFIER_NAME",
    "FPR_POSITIVE_SAMPLING",
    "CandidateClassifier",
    "FPRSettings",
    "candidate_labels",
    "extract_patches",
    "fuse_probability",
    "load_fpr_config",
    "load_fpr_section",
    "resolve_classifier",
]

logger = logging.getLogger(__name__)

CLASSIFIER_NAME = "fpr.pt"
"""File name of the classifier checkpoint, next to the detector's ``model.pt``."""
FPR_POSITIVE_SAMPLING = ("uniform", "contrast")
"""Values of ``fpr.positive_sampling``: every positive sample equally, or weighted by its nodule's contrast."""


@dataclass(frozen=True)
class FPRSettings:
    """The ``fpr`` config section (``bundle/configs/fpr.yaml``); keys and defaults are documented there.

    Raises:
        ValueError: a value out of range; the message names the ``fpr.<key>``.
    """

    enabled: bool = True
    checkpoint: str | None = None
    fov_mm: tuple[float, ...] = (20.0, 32.0, 48.0)
    grid: int = 16
    channels: tuple[int, ...] = (8, 16, 32)
    hidden: int = 64
    dropout: float = 0.2
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    fusion_weight: float = 0.25
    positive_fraction: float = 0.3
    positives_per_nodule: int = 4
    positive_jitter_mm: float = 2.0
    positive_sampling: str = "uniform"
    positive_contrast_hu: float = 500.0
    max_negatives_per_scan: int = 30
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov_mm", tuple(float(v) for v in self.fov_mm))
        object.__setattr__(self, "channels", tuple(int(v) for v in self.channels))
        checks = {
            "fov_mm": bool(self.fov_mm) and min(self.fov_mm) > 0,
            "grid": int(self.grid) >= 4,
            "channels": bool(self.channels) and min(self.channels) >= 1,
            "epochs": int(self.epochs) >= 0,
            "batch_size": int(self.batch_size) >= 1,
            "learning_rate": float(self.learning_rate) > 0,
            "fusion_weight": 0.0 <= float(self.fusion_weight) <= 1.0,
            "positive_fraction": 0.0 < float(self.positive_fraction) < 1.0,
            "positives_per_nodule": int(self.positives_per_nodule) >= 0,
            "positive_jitter_mm": float(self.positive_jitter_mm) >= 0,
            "positive_sampling": self.positive_sampling in FPR_POSITIVE_SAMPLING,
            "positive_contrast_hu": float(self.positive_contrast_hu) > 0,
            "max_negatives_per_scan": int(self.max_negatives_per_scan) >= 0,
            "dropout": 0.0 <= float(self.dropout) < 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad and bad[0] == "positive_sampling":
            raise ValueError(
                f"fpr.positive_sampling must be one of {list(FPR_POSITIVE_SAMPLING)}, got {self.positive_sampling!r}"
            )
        if bad:
            raise ValueError(
                f"fpr.{bad[0]} out of range: got {getattr(self, bad[0])!r} (see bundle/configs/fpr.yaml for the "
                f"accepted values)"
            )

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> FPRSettings:
        """From the ``fpr`` section; missing keys take the defaults, unknown keys are an error naming them."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"fpr: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**section)

    def network_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the :class:`MultiScaleClassifier` these settings describe."""
        return {
            "num_scales": len(self.fov_mm), "channels": list(self.channels), "hidden": int(self.hidden),
            "dropout": float(self.dropout),
        }  # fmt: skip


def load_fpr_config(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config`` (the user's keys, validated) layered over ``train.yaml`` and ``fpr.yaml``: every section, ``fpr``
    included, as ``pivot classify`` and ``pivot train-fpr`` read them."""
    from pivot_monai.config import default_config_path, load_config

    bases = [default_config_path(), default_config_path("fpr.yaml")]
    return load_config(dict(config) if isinstance(config, Mapping) else config, base_configs=bases)


def load_fpr_section(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``fpr`` section of :func:`load_fpr_config`."""
    return dict(load_fpr_config(config)["fpr"])


# ------------------------------------------------------------------------------------------------ patches
def _offsets(fov_mm: float, grid: int) -> np.ndarray:
    """(G,) voxel-centre offsets (mm) of a ``grid``-voxel line spanning ``fov_mm`` centred on 0."""
    step = fov_mm / grid
    return (np.arange(grid) - (grid - 1) / 2.0) * step


def extract_patches(
    image: np.ndarray | torch.Tensor,
    geometry: Geometry,
    world: np.ndarray,
    fov_mm: Sequence[float],
    grid: int,
    chunk: int = 64,
) -> torch.Tensor:
    """Multi-scale patches around world points, laid out along the world axes (module docstring).

    Args:
        image: (X, Y, Z) processed intensities (index order x, y, z, as everywhere in PIVOT).
        geometry: the image's geometry (world = origin + direction @ (spacing * index)).
        world: (N, 3) patch centres in world mm (x, y, z), LPS.
        fov_mm: (S,) field of view of each scale in mm (the patch's edge length).
        grid: voxels per patch edge ``G``.
        chunk: centres sampled per ``grid_sample`` call (bounds the memory of the sampling grid). Default 64.

    Returns:
        (N, S, G, G, G) float32 patches; ``patch[n, s, a, b, c]`` is the image at
        ``world[n] + (o_a, o_b, o_c)`` with ``o = (arange(G) - (G - 1) / 2) * fov_mm[s] / G``, 0 outside the image.

    Raises:
        ValueError: ``image`` is not 3D or ``world`` not (N, 3).
    """
    vol = torch.as_tensor(np.asarray(image, dtype=np.float32) if not torch.is_tensor(image) else image).float()
    if vol.dim() != 3:
        raise ValueError(f"extract_patches: image must be (X, Y, Z), got shape {list(vol.shape)}")
    points = np.asarray(world, dtype=np.float64).reshape(-1, 3)
    n, g = points.shape[0], int(grid)
    out = torch.zeros((n, len(fov_mm), g, g, g), dtype=torch.float32)
    if n == 0:
        return out
    # offset grid per scale, (S, G^3, 3) mm along world x, y, z
    offsets = np.stack(
        [np.stack(np.meshgrid(*(3 * [_offsets(f, g)]), indexing="ij"), axis=-1).reshape(-1, 3) for f in fov_mm]
    )
    size = np.asarray(vol.shape, dtype=np.float64)
    scale = 2.0 / np.maximum(size - 1.0, 1.0)
    vol5 = vol[None, None]
    for start in range(0, n, int(chunk)):
        centres = points[start : start + int(chunk)]
        wpts = centres[:, None, None, :] + offsets[None]  # (n, S, G^3, 3)
        idx = geometry.world_to_index(wpts.reshape(-1, 3))
        norm = idx * scale - 1.0  # align_corners=True: index 0 -> -1, size-1 -> +1
        # the tensor is (1, 1, X, Y, Z) = (N, C, D, H, W): grid_sample's last coordinate is (W, H, D) = (z, y, x)
        sample_grid = torch.from_numpy(norm[:, ::-1].astype(np.float32).copy()).view(1, -1, 1, 1, 3)
        values = F.grid_sample(vol5, sample_grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start : start + len(centres)] = values.view(len(centres), len(fov_mm), g, g, g)
    return out


def candidate_labels(world: np.ndarray, nodules: Sequence[Nodule], excluded: Sequence[Nodule] = ()) -> np.ndarray:
    """Training labels of candidates by the LUNA16 hit rule (:mod:`pivot_monai.metrics.matching`).

    Returns:
        (N,) int8: 1 inside a true nodule (squared distance strictly below its radius squared; diameter < 0 = 10 mm),
        -1 inside an excluded finding only (ignored, as LUNA16 ignores it), else 0 (a false positive).
    """
    pts = np.asarray(world, dtype=np.float64).reshape(-1, 3)

    def inside(findings: Sequence[Nodule]) -> np.ndarray:
        if not len(findings):
            return np.zeros(pts.shape[0], dtype=bool)
        centres = world_array(list(findings))
        d = np.asarray([f.diameter_mm for f in findings], dtype=np.float64)
        r2 = (np.where(d < 0, UNKNOWN_DIAMETER_MM, d) / 2.0) ** 2
        d2 = ((centres[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1)
        return (d2 < r2[:, None]).any(axis=0)

    hit, ignored = inside(nodules), inside(excluded)
    return np.where(hit, 1, np.where(ignored, -1, 0)).astype(np.int8)


def fuse_probability(detector: np.ndarray, classifier: np.ndarray, weight: float) -> np.ndarray:
    """``detector ** (1 - weight) * classifier ** weight`` in [0, 1] (weight 0: detector only, 1: classifier only)."""
    det = np.clip(np.asarray(detector, dtype=np.float64), 0.0, 1.0)
    cls = np.clip(np.asarray(classifier, dtype=np.float64), 0.0, 1.0)
    w = float(weight)
    return np.clip(det ** (1.0 - w) * cls**w, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ the classifier
class CandidateClassifier:
    """A trained :class:`MultiScaleClassifier` with the patch layout it was trained on.

    Args:
        network: the classifier network.
        fov_mm: fields of view (mm) of its input channels.
        grid: voxels per patch edge.
        fusion_weight: default ``w`` of :func:`fuse_probability`.
        device: where it runs. Default CPU.
        batch_size: candidates per forward. Default 128.
    """

    def __init__(
        self,
        network: MultiScaleClassifier,
        fov_mm: Sequence[float],
        grid: int,
        fusion_weight: float = 0.25,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
        detector: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.fov_mm, self.grid = tuple(float(f) for f in fov_mm), int(grid)
        self.fusion_weight, self.batch_size, self.detector = float(fusion_weight), int(batch_size), detector
        self.path: Path | None = None
        if network.num_scales != len(self.fov_mm):
            raise ValueError(f"classifier has {network.num_scales} scale streams but {len(self.fov_mm)} fov_mm given")

    def score(self, image: np.ndarray, geometry: Geometry, world: np.ndarray) -> np.ndarray:
        """(N,) nodule probabilities of the candidates at ``world`` (N, 3) mm in the processed ``image``."""
        patches = extract_patches(image, geometry, world, self.fov_mm, self.grid)
        probs = []
        with torch.no_grad():
            for start in range(0, patches.shape[0], self.batch_size):
                probs.append(self.network(patches[start : start + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)

    def rescore(
        self, image: np.ndarray, geometry: Geometry, candidates: ScanCandidates, weight: float | None = None
    ) -> tuple[ScanCandidates, np.ndarray]:
        """Candidates with fused probabilities, sorted by them (descending), and the permutation applied.

        Args:
            image, geometry: the processed scan.
            candidates: the detector's candidates on it.
            weight: fusion weight; ``None`` uses :attr:`fusion_weight`.

        Returns:
            (re-scored candidates, (N,) order such that ``new[i] = old[order[i]]``).
        """
        w = self.fusion_weight if weight is None else float(weight)
        fused = fuse_probability(candidates.probability, self.score(image, geometry, candidates.world), w)
        order = np.argsort(-fused, kind="stable")

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[order]

        rescored = ScanCandidates(
            candidates.world[order], fused[order], pick(candidates.diameter_mm), pick(candidates.malignancy)
        )
        return rescored, order

    def to_dict(self) -> dict[str, Any]:
        """What reports record of the classifier (``infer_report.json``, ``metrics.json``: ``settings.fpr``)."""
        return {
            "checkpoint": None if self.path is None else str(self.path), "fov_mm": list(self.fov_mm),
            "grid": self.grid, "fusion_weight": self.fusion_weight, "detector": self.detector,
        }  # fmt: skip

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the self-describing checkpoint (module docstring); ``extra`` keys are stored too."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        net = self.network
        state = {
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "network": dict(net.config),
            "patches": {"fov_mm": list(self.fov_mm), "grid": self.grid},
            "fusion_weight": self.fusion_weight,
            "detector": self.detector,
            **extra,
        }
        tmp = p.with_name(p.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CandidateClassifier:
        """Load a checkpoint written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a classifier checkpoint (e.g. a detector's ``model.pt``).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: classifier checkpoint not found (write one with `pivot train-fpr`)")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            raise ValueError(f"{p}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
        if not isinstance(state, Mapping) or not {"model", "network", "patches"} <= set(state):
            raise ValueError(
                f"{p}: not a candidate-classifier checkpoint (expected keys model, network, patches; a detector's "
                f"model.pt goes to --checkpoint, the classifier's fpr.pt to --classifier)"
            )
        network = MultiScaleClassifier(**dict(state["network"]))
        network.load_state_dict(state["model"])
        patches = state["patches"]
        loaded = cls(
            network, patches["fov_mm"], int(patches["grid"]), float(state.get("fusion_weight", 0.25)), device,
            detector=state.get("detector"),
        )  # fmt: skip
        loaded.path = p
        return loaded


def resolve_classifier(
    detector: Any,
    fpr_section: Mapping[str, Any] | None = None,
    classifier: str | Path | None = None,
    enabled: bool = True,
    device: str | torch.device = "cpu",
) -> CandidateClassifier | None:
    """The classifier ``pivot infer``/``pivot evaluate`` run, or ``None``.

    Order: ``enabled`` False (``--no-fpr``) or ``fpr.enabled: false`` -> none; an explicit ``classifier`` path
    (``--classifier``); ``fpr.checkpoint``; ``fpr.pt`` next to a detector checkpoint file when it exists; else none.
    The section's ``fusion_weight`` overrides the checkpoint's when the section sets one.

    Raises:
        FileNotFoundError, ValueError: an explicit or configured classifier that cannot be loaded.
    """
    section = dict(fpr_section or {})
    if not enabled or not section.get("enabled", True):
        return None
    path = classifier or section.get("checkpoint")
    if path is None and isinstance(detector, (str, Path)):
        sibling = Path(detector).with_name(CLASSIFIER_NAME)
        path = sibling if sibling.is_file() else None
    if path is None:
        return None
    loaded = CandidateClassifier.load(path, device)
    if "fusion_weight" in section:
        loaded.fusion_weight = float(FPRSettings(fusion_weight=section["fusion_weight"]).fusion_weight)
    if isinstance(detector, (str, Path)) and loaded.detector and loaded.detector != Path(detector).name:
        logger.warning("%s was trained on the candidates of %s, now applied to %s", path, loaded.detector, detector)
    logger.info("false-positive reduction: %s (fusion weight %.2f)", path, loaded.fusion_weight)
    return loaded
