from __future__ import annotations

import pytest

from pivot_monai.engines.factories import build_training_loss


def test_mining_keeps_the_full_loss_unless_voxel_selection_is_on():
    assert not build_training_loss({}, {"enabled": True}).hard_negative_enabled
    assert not build_training_loss({}, {"enabled": False, "voxel_selection": True}).hard_negative_enabled
    loss = build_training_loss({}, {"enabled": True, "voxel_selection": True, "neg_pos_ratio": 2.0})
    assert loss.hard_negative_enabled and loss.detection_loss.neg_pos_ratio == 2.0


def test_unknown_loss_section_is_named():
    with pytest.raises(ValueError, match=r"training.loss: unknown key\(s\) \['detecton'\]"):
        build_training_loss({"detecton": {}})
