"""Reading the guide sections of ``train.yaml`` outside the MONAI bundle parser (preprocessing, inference)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pivot_monai.config import default_config_path, load_layered

__all__ = ["load_data_section", "load_section"]

logger = logging.getLogger(__name__)


def load_section(name: str, config: str | Path | None = None) -> dict[str, Any]:
    """The ``name`` section of ``bundle/configs/train.yaml`` with ``config`` layered on top (see ``load_layered``).

    ``config`` may be a full config or an override file such as ``bundle/configs/demo.yaml`` (``data#...`` keys).
    Only literal values are meaningful here; ``$``/``@`` expressions are left as strings.

    Raises:
        FileNotFoundError: ``config`` does not exist.
        ValueError: the section is not a mapping.
    """
    paths: list[Path] = []
    default = default_config_path()
    if default.exists():
        paths.append(default)
    else:
        logger.info("%s not found; using built-in defaults", default)
    if config:
        if not Path(config).exists():
            raise FileNotFoundError(f"{config}: config file not found")
        if Path(config).resolve() != default.resolve():
            paths.append(Path(config))
    section = load_layered(paths).get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{config or default}: section '{name}' must be a mapping, got {type(section).__name__}")
    return section


def load_data_section(config: str | Path | None = None) -> dict[str, Any]:
    """The ``data`` section (preprocessing settings) of a config file."""
    return load_section("data", config)
