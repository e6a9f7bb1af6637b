"""What every ``pivot`` subcommand module shares: the :class:`Command` record and the argument helpers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Command", "Formatter", "add_config_argument"]

Formatter = argparse.ArgumentDefaultsHelpFormatter


@dataclass(frozen=True)
class Command:
    """One ``pivot`` subcommand.

    Args:
        name: the subcommand (``pivot <name>``).
        help: one line for ``pivot --help``.
        add_arguments: fills the subcommand's parser. Imports nothing heavy, so ``pivot --help`` stays fast.
        run: runs it on the parsed arguments and returns the exit code (0 ok, 1 some item failed). It raises
            ``ValueError``/``TypeError``/``OSError`` for bad input, which :func:`pivot_monai.cli.main` reports in one
            line with exit code 2.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _OneConfig(argparse.Action):
    """``--config`` given twice is an error: argparse would keep the last file and silently drop the first one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        previous = getattr(namespace, self.dest, None)
        if previous is not None:
            parser.error(
                f"--config given twice ({previous} and {values}): pivot reads one YAML merged over "
                "bundle/configs/train.yaml; put the keys of both into one file (later keys win), e.g. copy the "
                "lines of bundle/configs/demo.yaml you need into yours"
            )
        setattr(namespace, self.dest, values)


def add_config_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``-c/--config``: a user YAML merged over ``bundle/configs/train.yaml`` (see :mod:`pivot_monai.config`); given
    twice, an error."""
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        action=_OneConfig,
        default=None,
        help=f"YAML with the keys to change ({what}), merged over bundle/configs/train.yaml; None = the defaults",
    )
