"""Reliability tests use the session fixture ``tiny_processed`` and ``TINY_OVERRIDES`` from ``tests/conftest.py``."""

from tests.conftest import TINY_OVERRIDES, tiny_processed  # noqa: F401
