"""The multi-scale candidate classifier: shapes, output convention, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pivot_monai.networks.classifier import MultiScaleClassifier


def _blob_or_tube(n: int, grid: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two scales of patches: a sphere (nodule, label 1) or a tube along a random axis (vessel, label 0)."""
    ax = np.arange(grid) - (grid - 1) / 2.0
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    sphere = (x**2 + y**2 + z**2 <= (grid / 4) ** 2).astype(np.float32)
    tubes = [(y**2 + z**2 <= (grid / 6) ** 2), (x**2 + z**2 <= (grid / 6) ** 2), (x**2 + y**2 <= (grid / 6) ** 2)]
    labels = rng.integers(0, 2, n)
    patches = np.stack([sphere if lab else tubes[rng.integers(3)].astype(np.float32) for lab in labels])
    patches = patches + rng.normal(0, 0.1, patches.shape).astype(np.float32)
    return torch.from_numpy(np.stack([patches, patches], axis=1)), torch.from_numpy(labels.astype(np.float32))


@pytest.mark.parametrize("grid", [8, 16, 24])
def test_classifier_gives_one_score_per_candidate(grid):
    net = MultiScaleClassifier(num_scales=3, channels=(4, 8, 16)).eval()
    with torch.no_grad():
        out = net(torch.rand(5, 3, grid, grid, grid))
    assert out.shape == (5,)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_classifier_returns_logits_in_train_mode():
    torch.manual_seed(0)
    net = MultiScaleClassifier(num_scales=2, channels=(4, 8))
    x = torch.rand(4, 2, 8, 8, 8)
    net.train()
    logits = net(x)
    net.eval()
    with torch.no_grad():
        probs = net(x)
    assert logits.shape == probs.shape == (4,)
    assert torch.all((probs > 0) & (probs < 1))


def test_classifier_rejects_wrong_number_of_scales():
    net = MultiScaleClassifier(num_scales=3, channels=(4,))
    with pytest.raises(ValueError, match=r"\(B, 3, G, G, G\)"):
        net(torch.zeros(1, 2, 8, 8, 8))


@pytest.mark.parametrize("kwargs", [{"num_scales": 0}, {"channels": ()}, {"dropout": 1.0}])
def test_classifier_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiScaleClassifier(**kwargs)


def test_classifier_config_rebuilds_the_same_architecture():
    net = MultiScaleClassifier(num_scales=2, channels=(4, 8), hidden=16, dropout=0.1)
    again = MultiScaleClassifier(**net.config)
    again.load_state_dict(net.state_dict())  # strict: same parameters


def test_a_few_training_steps_reduce_the_loss(rng):
    torch.manual_seed(0)
    net = MultiScaleClassifier(num_scales=2, channels=(4, 8), hidden=16, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x_eval, y_eval = _blob_or_tube(64, 8, rng)

    def loss() -> float:
        net.eval()
        with torch.no_grad():
            return float(F.binary_cross_entropy(net(x_eval), y_eval))

    before = loss()
    for _ in range(40):
        net.train()
        x, y = _blob_or_tube(16, 8, rng)
        step = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        step.backward()
        opt.step()
    after = loss()
    assert after < 0.5 * before, (before, after)
