"""PIVOT performance and quality benchmarks (``make bench``; see ``benchmarks/README.md``).

Benchmarks measure the runtime the Makefile sets up: when ``OMP_WAIT_POLICY`` is not set, it is set to ``PASSIVE``
here, before torch is imported (a later setting has no effect on an already loaded OpenMP runtime).
"""

from __future__ import annotations

import os

__all__: list[str] = []

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile exports; bench_compute measures the effect
