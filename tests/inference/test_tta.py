from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from pivot_monai.inference.predictor import Predictor
from pivot_monai.inference.tta import TTA_TYPES, TTASettings, augment, augmentation_names, invert

ALL_NAMES = ["identity"] + [
    "+".join(c) for r in range(1, len(TTA_TYPES) + 1) for c in itertools.permutations(TTA_TYPES, r)
]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_invert_undoes_augment_exactly(name):
    x = torch.rand(2, 3, 5, 7, 4, generator=torch.Generator().manual_seed(0))
    y = augment(x, name)
    assert torch.equal(invert(y, name), x)
    if name != "identity":
        assert not torch.equal(y.reshape(-1)[: x.numel()], x.reshape(-1))


def test_rotate_90_swaps_the_in_plane_axes_and_flips_keep_the_shape():
    x = torch.zeros(1, 1, 5, 7, 4)
    assert augment(x, "rotate_90").shape == (1, 1, 7, 5, 4)
    assert augment(x, "flip_x+flip_y+flip_z").shape == x.shape


def test_augmentation_names_start_with_identity_and_stop_at_eight():
    names = augmentation_names()
    assert names == [
        "identity",
        "flip_x",
        "flip_y",
        "flip_z",
        "flip_x+flip_y",
        "flip_x+flip_z",
        "flip_y+flip_z",
        "flip_x+flip_y+flip_z",
    ]
    assert augmentation_names(("flip_z", "rotate_90"), 3) == ["identity", "flip_z", "rotate_90"]
    with pytest.raises(ValueError, match="num_augmentations"):
        augmentation_names(num_augmentations=9)
    with pytest.raises(ValueError, match="unknown TTA operation"):
        augmentation_names(("flip_w",))


def test_tta_settings_from_config_and_override():
    assert TTASettings.from_config(None).names == ["identity"]
    assert len(TTASettings.from_config({"enabled": True}).names) == 8
    assert TTASettings.from_config({"enabled": True}, enabled=False).names == ["identity"]
    assert (
        len(TTASettings.from_config({"augmentation_types": ["flip_x"], "num_augmentations": 2}, enabled=True).names)
        == 2
    )
    with pytest.raises(ValueError, match="inference.tta.typo"):
        TTASettings.from_config({"typo": 1})


def test_tta_on_a_symmetric_input_equals_plain_inference(oracle):
    # a radially symmetric volume is invariant under every flip and the in-plane quarter turn; the oracle is
    # equivariant (symmetric kernels), and one window covers the volume, so every TTA pass gives the same maps
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0) - 11.5] * 3, indexing="ij"))
    r = grid.pow(2).sum(0).sqrt()
    x = torch.where(r < 4, 0.74, torch.where(r < 10, 0.11, 0.74))[None, None]
    plain = Predictor(oracle, (24, 24, 24))(x)
    tta = Predictor(
        oracle, (24, 24, 24), tta={"enabled": True, "augmentation_types": ["flip_x", "rotate_90", "flip_z"]}
    )(x)
    assert plain["heatmap"].max() > 0.5
    for key in plain:
        torch.testing.assert_close(tta[key], plain[key], atol=1e-6, rtol=0)


class _Pool(torch.nn.Module):
    """Position-exact 'network' at output stride 2: every map is the 2x2x2 mean of the input."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.avg_pool3d(x, 2)
        return {"heatmap": y, "diameter": 10 * y, "malignancy": 1 - y}


def test_tta_maps_every_pass_back_onto_the_input_grid_at_stride_2():
    x = torch.rand(1, 1, 21, 18, 19, generator=torch.Generator().manual_seed(1))
    expected = F.avg_pool3d(F.pad(x, (0, 1, 0, 0, 0, 1)), 2)  # padded to a multiple of the stride
    tta = {"enabled": True, "augmentation_types": ["flip_x", "flip_y", "rotate_90"], "num_augmentations": 8}
    for settings in (None, tta):
        out = Predictor(_Pool(), (16, 16, 16), tta=settings)(x)
        assert out["heatmap"].shape == (1, 1, 11, 9, 10)
        torch.testing.assert_close(out["heatmap"], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["malignancy"], 1 - expected, atol=1e-6, rtol=0)
