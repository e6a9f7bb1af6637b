"""data.io.check_continuity: a header whose DimSize does not describe the payload's layout (axes swapped with the same
byte count) is refused, on synthetic CT; real layouts and noise-only test volumes pass."""

from __future__ import annotations

import numpy as np
import pytest

from pivot_monai.data.io import CTReadError, neighbour_ratios, read_ct, read_mhd_header
from pivot_monai.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def synthetic_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, num_scans=1, seed=11, size="small")
    return next(root.rglob("*.mhd"))


def _with_dims(mhd, dims, folder):
    folder.mkdir(exist_ok=True)
    raw = mhd.with_suffix(".raw")
    (folder / raw.name).write_bytes(raw.read_bytes())
    old = read_mhd_header(mhd)["DimSize"]
    out = folder / mhd.name
    out.write_text(mhd.read_text().replace(f"DimSize = {old}", "DimSize = " + " ".join(map(str, dims))))
    return out


def test_a_synthetic_ct_is_smooth_along_every_axis(synthetic_scan):
    volume = read_ct(synthetic_scan)
    assert max(neighbour_ratios(volume.array)) < 0.2


@pytest.mark.parametrize("order", [(0, 2, 1), (2, 1, 0), (1, 2, 0)], ids=["y<->z", "x<->z", "rotated"])
def test_every_permutation_of_unequal_axes_is_refused_with_the_header_size(synthetic_scan, tmp_path, order):
    size = [int(v) for v in read_mhd_header(synthetic_scan)["DimSize"].split()]
    dims = [size[i] for i in order]
    if dims == size:
        pytest.skip("equal axes: the same image")
    with pytest.raises(CTReadError, match=rf"not laid out as the header's DimSize \[{dims[0]}, {dims[1]}, {dims[2]}\]"):
        read_ct(_with_dims(synthetic_scan, dims, tmp_path / "swapped"))


def test_a_noise_volume_is_not_called_a_layout_error():
    rng = np.random.default_rng(0)
    assert min(neighbour_ratios(rng.integers(-1000, 400, (20, 30, 40)).astype(np.int16))) > 0.5  # noisy everywhere
