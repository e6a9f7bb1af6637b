"""Packaging hook: the wheel carries the bundle's configs and model card as package data.

``bundle/configs/`` (train.yaml, inference.yaml, evaluate.yaml, fpr.yaml, metadata.json, logging.conf, ...) and
``bundle/docs/README.md`` are copied to ``pivot_monai/_bundle/`` of the built package, so an installed ``pivot``
(``pip install .``, ``pip wheel .``, ``python -m build``) finds its defaults without the checkout. The checkout keeps
one copy: ``bundle/`` itself. Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE = Path(__file__).resolve().parent / "bundle"
SHIPPED = {"configs": ("*.yaml", "*.json", "*.conf"), "docs": ("*.md",)}


class BuildPyWithBundle(build_py):
    """``build_py`` that also copies the bundle files into ``pivot_monai/_bundle/`` of the build."""

    def run(self) -> None:
        super().run()
        for folder, patterns in SHIPPED.items():
            target = Path(self.build_lib) / "pivot_monai" / "_bundle" / folder
            target.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for source in sorted((BUNDLE / folder).glob(pattern)):
                    shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithBundle})
