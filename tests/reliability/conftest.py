"""Reliability fixtures: ``tiny_processed`` / ``TINY_OVERRIDES`` from ``tests/conftest.py`` and a full filesystem."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import TINY_OVERRIDES, tiny_processed  # noqa: F401


@pytest.fixture
def full_disk(tmp_path):
    """A 512 kB tmpfs mounted at ``tmp_path/full`` (needs root; skipped elsewhere)."""
    mount = tmp_path / "full"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)
