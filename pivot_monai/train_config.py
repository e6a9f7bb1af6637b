"""Reading the guide sections of ``train.yaml`` outside the MONAI bundle parser (preprocessing, inference)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pivot_monai.config import default_config_path, load_yaml

__all__ = ["load_data_section", "load_section"]

logger = logging.getLogger(__name__)


def load_section(name: str, config: str | Path | None = None) -> dict[str, Any]:
    """The ``name`` section of ``config`` (default ``bundle/configs/train.yaml``); ``{}`` when there is none.

    Only literal values are meaningful here; ``$``/``@`` expressions are left as strings.
    """
    path = Path(config) if config else default_config_path()
    if not path.exists():
        if config:
            raise FileNotFoundError(f"{path}: config file not found")
        logger.info("%s not found; using built-in defaults", path)
        return {}
    section = load_yaml(path).get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: section '{name}' must be a mapping, got {type(section).__name__}")
    return section


def load_data_section(config: str | Path | None = None) -> dict[str, Any]:
    """The ``data`` section (preprocessing settings) of a config file."""
    return load_section("data", config)
