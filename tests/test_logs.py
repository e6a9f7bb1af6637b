"""pivot_monai.logs: the console of logging.conf (one format, routine library lines at DEBUG, rounded library floats)
and tqdm progress (a live bar on a terminal, rate-limited lines otherwise)."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
import time

import pytest

from pivot_monai.logs import ConsoleHandler, PivotFormatter, progress, progress_mode, round_floats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console(stream: io.StringIO, level: int = logging.INFO) -> ConsoleHandler:
    handler = ConsoleHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(PivotFormatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def _emit(handler: ConsoleHandler, name: str, message: str, level: int = logging.INFO) -> None:
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    if record.levelno >= handler.level:
        handler.handle(record)


def test_long_library_floats_are_rounded_but_uids_paths_and_times_are_not():
    assert round_floats("best value: 0.8528138528138528 at epoch: 3") == "best value: 0.8528 at epoch: 3"
    assert round_floats("Current learning rate: 0.0009997532801828658") == "Current learning rate: 0.0009998"
    kept = "1.3.6.1.4.1.14519.5.2.1.6279.6001.226233299398734582327002900231 /runs/0.1234567/x 00:00:01.091 1e-06"
    assert round_floats(kept) == kept


def test_routine_engine_lines_are_debug_and_info_floats_are_rounded_but_not_in_errors():
    out = io.StringIO()
    handler = _console(out)
    _emit(handler, "ignite.engine.engine.SupervisedTrainer", "Epoch[3] Complete. Time taken: 00:00:02.067")
    _emit(handler, "monai.handlers.StatsHandler", "Epoch: 1/2, Iter: 2/8 -- train_loss: 0.5861 ")
    _emit(handler, "monai.handlers.StatsHandler", "Key metric: val_froc best value: 0.8528138528138528 at epoch: 1")
    _emit(handler, "pivot_monai.inference.evaluate", "evaluated 3 scan(s): CPM 0.8528138528138528, Dice 0.5")
    _emit(handler, "pivot_monai.engines.validate", "lr must be <= 1, got 1.0000001", logging.ERROR)
    assert out.getvalue().splitlines() == [
        "INFO monai.handlers.StatsHandler: Key metric: val_froc best value: 0.8528 at epoch: 1",
        "INFO pivot_monai.inference.evaluate: evaluated 3 scan(s): CPM 0.8528, Dice 0.5",
        "ERROR pivot_monai.engines.validate: lr must be <= 1, got 1.0000001",
    ]
    verbose = io.StringIO()
    handler = _console(verbose, logging.DEBUG)
    _emit(handler, "ignite.engine.engine.SupervisedTrainer", "Current learning rate: 0.001")
    assert verbose.getvalue() == "DEBUG ignite.engine.engine.SupervisedTrainer: Current learning rate: 0.001\n"


def test_a_bad_log_level_in_the_environment_is_refused_with_its_name(monkeypatch):
    monkeypatch.setenv("PIVOT_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="PIVOT_LOG_LEVEL must be one of .* got 'LOUD'"):
        ConsoleHandler(io.StringIO())


def test_log_mode_writes_a_line_per_interval_with_count_rate_and_eta(caplog):
    logger = logging.getLogger("pivot_monai.test_progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in progress(range(6), desc="infer", unit="scan", logger=logger, mode="log", interval=0.05):
            time.sleep(0.03)
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert 1 <= len(lines) <= 4, lines  # rate-limited: not one per item
    assert all(line.startswith("infer: ") and "scan" in line and "ETA" in line for line in lines)
    assert "/6 scan (" in lines[0] and "\r" not in "".join(lines)


def test_log_mode_is_silent_for_a_loop_shorter_than_the_interval(caplog):
    logger = logging.getLogger("pivot_monai.test_progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in progress(range(50), desc="synth", unit="scan", logger=logger, mode="log", interval=60):
            pass
    assert [r for r in caplog.records if r.name == logger.name] == []


def test_the_mode_follows_the_environment_and_refuses_unknown_names(monkeypatch):
    monkeypatch.setenv("PIVOT_PROGRESS", "off")
    assert progress_mode() == "off"
    monkeypatch.setenv("PIVOT_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="PIVOT_PROGRESS must be one of"):
        progress_mode()


def test_an_unsized_pseudo_terminal_still_shows_the_bar(monkeypatch):
    master, slave = pty.openpty()  # a fresh pty reports 0 x 0, where tqdm hid every bar
    try:
        stream = os.fdopen(slave, "w", buffering=1, closefd=False)
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.delenv("PIVOT_PROGRESS", raising=False)
        assert progress_mode() == "bar"
        for _ in progress(range(3), desc="preprocess", unit="scan", mininterval=0, leave=True):
            pass
        stream.flush()
        shown = os.read(master, 65536).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "preprocess" in shown and "3/3" in shown


def test_setup_logging_gives_one_format_for_pivot_library_lines_and_warnings():
    code = (
        "import logging, warnings\n"
        "from pivot_monai.logs import setup_logging\n"
        "setup_logging()\n"
        "logging.getLogger('pivot_monai.x').info('hello')\n"
        "logging.getLogger('pivot_monai.x').debug('hidden')\n"
        "logging.getLogger('ignite.engine.engine.SupervisedTrainer').info('Engine run finished. Time taken: 1')\n"
        "logging.getLogger('monai.bundle.workflows').info('value 0.8528138528138528')\n"
        "warnings.warn('a library warning')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PIVOT_LOG_LEVEL", "PYTHONWARNINGS")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60, check=True
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(" INFO pivot_monai.x: hello")
    assert lines[1].endswith(" INFO monai.bundle.workflows: value 0.8528")
    assert " WARNING py.warnings: " in lines[2] and "a library warning" in lines[2]
