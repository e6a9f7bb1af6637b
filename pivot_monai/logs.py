"""One console for every stage: the log format of ``bundle/configs/logging.conf`` and tqdm progress.

``logging.conf`` is the single description of PIVOT's console. It is applied by :func:`setup_logging` (every
``pivot`` command, ``scripts/run_demo.py``) and by MONAI's bundle runner (``python -m monai.bundle run ...`` reads
the bundle's ``configs/logging.conf``), and names the two classes of this module:

* :class:`ConsoleHandler` writes records above ``PIVOT_LOG_LEVEL`` (default ``INFO``; ``pivot -v`` sets ``DEBUG``)
  without breaking a live progress bar. Routine library lines (ignite's "Epoch[3] Complete", "Current learning
  rate", MONAI's per-iteration ``StatsHandler`` loss lines, the bundle runner's input summary) are shown as DEBUG:
  the per-epoch summary of :class:`~pivot_monai.handlers.progress.TrainingProgress` replaces them at INFO.
* :class:`PivotFormatter` rounds long floats in INFO lines (``best value: 0.8528138528138528``, a ``CPM %s``) to
  4 decimals.

:func:`progress` is the tqdm bar of PIVOT's long loops (synth, preprocess, training epochs, infer, evaluate): live on
a terminal; where stderr is a file or a pipe, a plain log line at most every ``PIVOT_PROGRESS_INTERVAL`` seconds
(default 30) with the count, the rate and the ETA, so a log file gets a heartbeat instead of carriage returns.

Example:
    >>> for scan in progress(scans, desc="infer", unit="scan", logger=logger):  # doctest: +SKIP
    ...     predict(scan)
"""

from __future__ import annotations

import copy
import io
import logging
import logging.config
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = [
    "INTERVAL_ENV",
    "LEVEL_ENV",
    "MODE_ENV",
    "ConsoleHandler",
    "PivotFormatter",
    "live_progress",
    "progress",
    "progress_mode",
    "round_floats",
    "setup_logging",
]

LEVEL_ENV = "PIVOT_LOG_LEVEL"
"""Console level (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``); inherited by child processes such as the demo's
bundle training."""
MODE_ENV = "PIVOT_PROGRESS"
"""``bar``, ``log`` or ``off``; unset: ``bar`` when stderr is a terminal, else ``log``."""
INTERVAL_ENV = "PIVOT_PROGRESS_INTERVAL"
"""Seconds between the plain progress lines of ``log`` mode. Default 30."""

_MODES = ("bar", "log", "off")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Library records shown at DEBUG instead of INFO: (logger name prefix, message pattern). The epoch summary line says
# what they say, once per epoch.
_ROUTINE = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("ignite.engine", r"Engine run (resuming|starting|finished)|Epoch\[\d+\] Complete|Current learning rate"),
        ("monai.handlers.StatsHandler", r"Epoch: \d+/\d+, Iter: \d+/\d+ --"),  # the per-iteration loss
        ("monai.bundle", r"--- input summary|> |---\s*\Z|\s*\Z|Setting logging properties"),
    )
)

# a float with 5+ decimals standing alone (after a space, ':', '=', '(', '[' or ','): not part of a path or uid
_LONG_FLOAT = re.compile(r"(?:(?<=[\s:=(\[,])|^)(-?\d+\.\d{5,})(?=$|[\s,;)\]])")


def round_floats(text: str) -> str:
    """``text`` with every stand-alone float of 5+ decimals rounded: 4 decimals, or 4 digits below 0.01.

    Example:
        >>> round_floats("val_froc best value: 0.8528138528138528 at epoch: 3, lr 0.0009997532801828658")
        'val_froc best value: 0.8528 at epoch: 3, lr 0.0009998'
    """

    def short(match: re.Match) -> str:
        v = float(match.group(1))
        return f"{v:.4f}" if v == 0 or abs(v) >= 0.01 else f"{v:.4g}"

    return _LONG_FLOAT.sub(short, text)


def _routine(record: logging.LogRecord) -> bool:
    if record.levelno != logging.INFO:
        return False
    message = None
    for name, pattern in _ROUTINE:
        if record.name.startswith(name):
            message = record.getMessage() if message is None else message
            if pattern.match(message):
                return True
    return False


def _env_level() -> int:
    name = os.environ.get(LEVEL_ENV, "INFO").strip().upper()
    if name not in _LEVELS:
        raise ValueError(f"{LEVEL_ENV} must be one of {list(_LEVELS)}, got {os.environ[LEVEL_ENV]!r}")
    return getattr(logging, name)


class ConsoleHandler(logging.StreamHandler):
    """The console of ``logging.conf``: level ``PIVOT_LOG_LEVEL``, routine library lines at DEBUG, bars kept intact.

    A record written while a live tqdm bar is on screen clears the bar, is written, and redraws it
    (``tqdm.external_write_mode``), so log lines and bars never share a line.

    Args:
        stream: where the records go. Default ``sys.stderr`` (``logging.conf`` passes ``sys.stdout``).

    Raises:
        ValueError: ``PIVOT_LOG_LEVEL`` is not a level name.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.setLevel(_env_level())

    def handle(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if _routine(record):
            if self.level > logging.DEBUG:
                return False
            record = copy.copy(record)  # other handlers (a test's capture) keep the original level
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        if getattr(tqdm, "_instances", None):
            with tqdm.external_write_mode(file=self.stream):
                super().emit(record)
        else:
            super().emit(record)


class PivotFormatter(logging.Formatter):
    """``logging.Formatter`` that rounds long floats (:func:`round_floats`) in INFO and DEBUG lines, and drops the
    trailing newlines of library messages (captured warnings end in one).

    Warnings and errors keep their numbers as written: they quote the values that arrived.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: D102, N802 - logging's name
        text = record.message if record.name.startswith("pivot_monai") else record.message.rstrip()
        if record.levelno <= logging.INFO:
            text = round_floats(text)
        if text != record.message:
            record = copy.copy(record)
            record.message = text
        return super().formatMessage(record)


def setup_logging(verbose: bool = False, config: str | Path | None = None) -> None:
    """Apply ``logging.conf`` unless logging is configured already; ``verbose`` shows DEBUG.

    Warnings go through logging too (``logging.captureWarnings``), in the same format.

    Args:
        verbose: console level DEBUG (also for child processes, through ``PIVOT_LOG_LEVEL``). Default False.
        config: the ``logging.conf`` to apply. Default the bundle's ``bundle/configs/logging.conf``.

    Raises:
        ValueError: ``PIVOT_LOG_LEVEL`` is not a level name.
    """
    if verbose:
        os.environ[LEVEL_ENV] = "DEBUG"
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a process (or test harness) that configured logging keeps it
        if config is None:
            from pivot_monai.config import default_config_path

            config = default_config_path("logging.conf")
        logging.config.fileConfig(str(config), disable_existing_loggers=False)
    if verbose:
        for handler in root.handlers:
            if isinstance(handler, ConsoleHandler):
                handler.setLevel(logging.DEBUG)
    logging.captureWarnings(True)


def progress_mode() -> str:
    """``PIVOT_PROGRESS`` if set, else ``bar`` when stderr is a terminal and ``log`` otherwise.

    Raises:
        ValueError: ``PIVOT_PROGRESS`` is not ``bar``, ``log`` or ``off``.
    """
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if not mode:
        return "bar" if getattr(sys.stderr, "isatty", lambda: False)() else "log"
    if mode not in _MODES:
        raise ValueError(f"{MODE_ENV} must be one of {list(_MODES)}, got {os.environ[MODE_ENV]!r}")
    return mode


def live_progress() -> bool:
    """Whether live bars are wanted (for libraries' own bars, e.g. MONAI ``CacheDataset(progress=...)``)."""
    return progress_mode() == "bar"


def _terminal_size() -> dict[str, Any]:
    """tqdm's size arguments: the terminal's own size, or 80 x 24 (``COLUMNS``/``LINES``) where it reports 0 x 0.

    A pseudo-terminal that was never sized (``script``, some CI runners, ``docker exec -t``) reports 0 rows, and
    tqdm then hides every bar as "below the screen".
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    if size.columns and size.lines:
        return {"dynamic_ncols": True}
    columns, lines = shutil.get_terminal_size()
    return {"ncols": columns, "nrows": lines}


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


class _LogLines(io.TextIOBase):
    """A text stream for tqdm that logs each distinct status line (carriage returns and padding squeezed out)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self._last = logger, ""

    def write(self, text: str) -> int:  # noqa: D102
        line = " ".join(text.replace("\r", " ").split())
        if line and line != self._last:
            self.logger.info("%s", line)
            self._last = line
        return len(text)


_LOG_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f} %), {rate_fmt}{postfix}, elapsed {elapsed}, ETA {remaining}"
)
_LOG_FORMAT_OPEN = "{desc}: {n_fmt} {unit}, {rate_fmt}{postfix}, elapsed {elapsed}"  # no total: no percentage or ETA


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    logger: logging.Logger | None = None,
    mode: str | None = None,
    interval: float | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand): live on a terminal, rate-limited log lines otherwise.

    Args:
        iterable: what to iterate over; ``None``: call ``update()``.
        total: number of items (default ``len(iterable)``).
        desc: the loop's name (``"infer"``, ``"epoch 3/22"``).
        unit: what an item is (``"scan"``). Default ``"it"``.
        logger: where ``log`` mode writes. Default ``pivot_monai.progress``.
        mode: ``bar``, ``log`` or ``off``. Default :func:`progress_mode`.
        interval: seconds between ``log`` lines; nothing is logged for a loop shorter than that. Default
            ``PIVOT_PROGRESS_INTERVAL`` or 30.
        **kwargs: more tqdm arguments for ``bar`` mode (``leave``, ``postfix``...).

    Returns:
        The ``tqdm`` instance (``set_postfix``, ``update`` and ``close`` work in every mode).

    Raises:
        ValueError: a bad ``mode`` or interval (also from ``PIVOT_PROGRESS`` / ``PIVOT_PROGRESS_INTERVAL``).
    """
    mode = progress_mode() if mode is None else mode
    if mode not in _MODES:
        raise ValueError(f"progress mode must be one of {list(_MODES)}, got {mode!r}")
    if mode == "bar":
        return tqdm(iterable, total=total, desc=desc, unit=unit, **{"leave": False, **_terminal_size(), **kwargs})
    if mode == "off":
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    seconds = _interval() if interval is None else float(interval)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=_LogLines(logger or logging.getLogger("pivot_monai.progress")),
        mininterval=seconds,
        miniters=1,
        delay=seconds,
        position=0,
        leave=False,
        ascii=True,
        bar_format=_LOG_FORMAT if total is not None else _LOG_FORMAT_OPEN,
    )
