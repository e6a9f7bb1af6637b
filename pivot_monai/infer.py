"""``python -m pivot_monai.infer ...``: the ``pivot infer`` command as a module.

Example::

    python -m pivot_monai.infer --checkpoint bundle/models/model.pt --input data/raw/subset0 --output results/infer
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pivot_monai.inference.commands import add_infer_arguments, run_infer

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``pivot infer`` parser, standalone."""
    p = argparse.ArgumentParser(
        prog="python -m pivot_monai.infer",
        description="detect nodules in raw CT scans",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_infer_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run inference; returns the exit code (0 ok, 1 a scan failed, 2 bad arguments)."""
    from pivot_monai.cli import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_infer(args)


if __name__ == "__main__":
    sys.exit(main())
