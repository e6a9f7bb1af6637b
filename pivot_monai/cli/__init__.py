"""The ``pivot`` command: one thin subcommand per pipeline stage, each wrapping a library function.

The subcommands live in :mod:`pivot_monai.cli.data` (``synth``, ``preprocess``, ``split``),
:mod:`pivot_monai.cli.train` (``train``) and :mod:`pivot_monai.cli.inference` (``infer``, ``evaluate``, ``export``);
each module lists its :class:`~pivot_monai.cli.common.Command` records in ``COMMANDS``, and :data:`COMMANDS` here
gathers them once, in :data:`COMMAND_MODULES` order (a new stage adds its module's name there). Those modules import
nothing heavy at the top, so ``pivot --help`` answers without loading torch.

:func:`main` is the single user-facing error path: expected failures (``ValueError``, ``TypeError``, ``OSError``,
``KeyError`` for config keys, ``ImportError`` of an optional dependency) are logged as one line and exit with code 2;
``--debug`` logs the traceback too.

Example:
    >>> main(["--version"])  # doctest: +SKIP
    pivot 0.1.0
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pivot_monai import __version__
from pivot_monai.cli.common import Command, Formatter

__all__ = ["COMMANDS", "COMMAND_MODULES", "EXPECTED_ERRORS", "build_parser", "main", "setup_logging"]

logger = logging.getLogger("pivot_monai")

COMMAND_MODULES = ("data", "train", "inference", "fpr", "serve")
"""Modules of :mod:`pivot_monai.cli` whose ``COMMANDS`` make up ``pivot`` (a ``serve`` module goes here too)."""

EXPECTED_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError)
"""What bad input raises: reported in one line with exit code 2 instead of a traceback."""


def _gather(modules: Sequence[str]) -> dict[str, Command]:
    commands: dict[str, Command] = {}
    for name in modules:
        for command in importlib.import_module(f"{__name__}.{name}").COMMANDS:
            if command.name in commands:
                raise RuntimeError(f"pivot command {command.name!r} is defined twice (cli.{name})")
            commands[command.name] = command
    return commands


COMMANDS: dict[str, Command] = _gather(COMMAND_MODULES)
"""Every ``pivot`` subcommand by name, built once."""


def setup_logging(verbose: bool = False) -> None:
    """One console for every command: ``bundle/configs/logging.conf`` (:func:`pivot_monai.logs.setup_logging`)."""
    from pivot_monai.logs import setup_logging as apply_logging_conf

    apply_logging_conf(verbose)


def build_parser() -> argparse.ArgumentParser:
    """The ``pivot`` parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="pivot", description="PIVOT lung-nodule detection pipeline", formatter_class=Formatter
    )
    parser.add_argument("--version", action="version", version=f"pivot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        sp = sub.add_parser(command.name, help=command.help, description=command.help, formatter_class=Formatter)
        command.add_arguments(sp)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, KeyError, OSError)) else f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pivot`` console script. Returns the process exit code.

    0 ok, 1 some scan/item failed (the command logs which), 2 bad arguments, config or input.
    """
    from pivot_monai.host import passive_omp_threads

    passive_omp_threads()  # before any command imports torch; a policy the user set is kept
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except EXPECTED_ERRORS as err:
        hint = "" if args.debug else " (pivot --debug shows the traceback)"
        logger.error("pivot %s: %s%s", args.command, _one_line(err), hint, exc_info=args.debug)
        return 2


if __name__ == "__main__":
    sys.exit(main())
