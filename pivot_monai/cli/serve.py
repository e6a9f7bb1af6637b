"""``pivot serve``: a thin wrapper of :func:`pivot_monai.api.serve` (the training API and its dashboard)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pivot_monai.cli.common import Command

__all__ = ["COMMANDS", "run_serve"]


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pivot serve``; ``None`` defaults come from the ``PIVOT_API_*`` environment, then built-ins."""
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind; a non-loopback one needs PIVOT_API_TOKEN to be set"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--db", type=Path, default=None, help="SQLite state file (None: <runs-dir>/sessions.db)")
    p.add_argument(
        "--configs-root",
        type=Path,
        default=None,
        help="the only folder whose configs sessions may run (None: bundle/configs)",
    )
    p.add_argument("--runs-dir", type=Path, default=None, help="parent of the session folders (None: runs/api)")
    p.add_argument("--max-concurrent", type=int, default=None, help="sessions training at once (None: 1)")


def run_serve(args: argparse.Namespace) -> int:
    """``pivot serve``: serves until interrupted; 0 on a clean shutdown."""
    from pivot_monai.api import serve

    serve(args.host, args.port, args.db, args.configs_root, args.max_concurrent, args.runs_dir)
    return 0


COMMANDS = (
    Command("serve", "serve the training API and its dashboard (FastAPI + SQLite)", add_serve_arguments, run_serve),
)
