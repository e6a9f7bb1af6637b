"""Which model a benchmark measures: a trained model only where it fits the benchmark's settings."""

from __future__ import annotations

import pytest
import torch

from pivot_monai.networks import build_network
from pivot_monai.networks.checkpoint import save_model
from pivot_monai.networks.metadata import describe_model

NET = {"base_filters": 4, "depth": 2, "output_stride": 2}


@pytest.fixture
def demo_model(tmp_path, monkeypatch):
    """A self-describing model trained at 1.5 mm, standing in for `make demo`'s bundle/models/model.pt."""
    from benchmarks import common

    torch.manual_seed(0)
    meta = describe_model({"model": NET, "data": {"target_spacing": [1.5, 1.5, 1.5]}, "inference": {}})
    path = save_model(tmp_path / "bundle" / "model.pt", build_network(NET).state_dict(), meta)
    monkeypatch.setattr(common, "DEFAULT_CHECKPOINT", path)
    monkeypatch.setattr(common, "WORK_DIR", tmp_path / "work")
    return path


def test_the_trained_model_is_measured_when_it_fits(demo_model):
    from benchmarks.common import resolve_checkpoint

    sections = {"model": NET, "data": {"target_spacing": [1.5, 1.5, 1.5]}}
    assert resolve_checkpoint(None, NET, sections) == (demo_model, True)


def test_quick_settings_pass_over_the_default_model_for_random_weights(demo_model, caplog):
    from benchmarks.common import resolve_checkpoint

    sections = {"model": NET, "data": {"target_spacing": [4.0, 4.0, 4.0]}}  # --quick
    path, trained = resolve_checkpoint(None, NET, sections)
    assert not trained and path != demo_model and path.is_file()
    assert "data.target_spacing: [4.0, 4.0, 4.0] (config) vs [1.5, 1.5, 1.5] (model)" in caplog.text
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "using random weights" in warnings[0].getMessage()  # one warning says both


def test_a_given_checkpoint_that_does_not_fit_is_an_error(demo_model):
    from benchmarks.common import resolve_checkpoint

    sections = {"model": {**NET, "base_filters": 8}, "data": {"target_spacing": [1.5, 1.5, 1.5]}}
    with pytest.raises(ValueError, match=r"--checkpoint .*model.pt does not fit .*model.base_filters: 8"):
        resolve_checkpoint(demo_model, NET, sections)
