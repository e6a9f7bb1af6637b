"""The YAML blocks of the training guide (``../shared/guide/TRAINING.md``), by heading, and their copies in tests/guide.

The tests read each block from the guide itself when ``../shared`` is present and from its copy under ``tests/guide``
otherwise too, so the suite runs without it; :func:`guide_blocks` lets a test check that the copies are current.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

GUIDE = REPO_ROOT.parent / "shared" / "guide" / "TRAINING.md"
COPIES = REPO_ROOT / "tests" / "guide"
BLOCKS = {
    "minimal_configuration": "### Minimal Configuration",
    "complete_configuration_example": "### Complete Configuration Example",
    "u_net_configuration": "### U-Net Configuration",
    "custom_architecture": "### Custom Architecture",
    "focal_loss": "### Focal Loss (Recommended for Detection)",
    "dice_loss": "### Dice Loss",
    "multi_task_loss": "### Multi-Task Loss",
    "hard_negative_mining": "### Hard Negative Mining",
    "adamw": "#### AdamW (Recommended)",
    "sgd_with_momentum": "#### SGD with Momentum",
    "cosine_annealing": "#### Cosine Annealing (Recommended)",
    "step_decay": "#### Step Decay",
    "reduce_on_plateau": "#### Reduce on Plateau",
    "gradient_clipping": "### Gradient Clipping",
    "tensorboard": "### TensorBoard",
    "weights_biases": "### Weights & Biases",
    "early_stopping": "### Early Stopping",
    "data_parallel": "### Data Parallel",
    "distributed_data_parallel": "### Distributed Data Parallel (Recommended)",
    "mixed_precision_training": "### Mixed Precision Training",
    "transfer_learning": "### Transfer Learning",
    "progressive_training": "### Progressive Training",
    "curriculum_learning": "### Curriculum Learning",
    "test_time_augmentation": "### Test-Time Augmentation",
}
"""Every YAML block of the guide: the copy's file stem -> the guide's heading above it."""


def guide_blocks() -> list[tuple[str, str]]:
    """``(heading, yaml text)`` of every YAML block of the guide, in order, each under the nearest heading above."""
    heading, out = "", []
    for match in re.finditer(r"^(#{2,4} [^\n]*)$|^```yaml\n(.*?)^```", GUIDE.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1).strip()
        else:
            out.append((heading, match.group(2)))
    return out


def block(name: str, source: str = "copy") -> dict[str, Any]:
    """The block ``name`` (a key of :data:`BLOCKS`) from the guide (``source="guide"``, skipped when the guide is
    absent) or from its copy."""
    if source == "guide":
        if not GUIDE.is_file():
            pytest.skip(f"{GUIDE} not present")
        found = [text for heading, text in guide_blocks() if heading == BLOCKS[name]]
        assert found, f"no YAML block under {BLOCKS[name]!r} in {GUIDE}"
        return yaml.safe_load(found[0])
    return yaml.safe_load((COPIES / f"{name}.yaml").read_text())
