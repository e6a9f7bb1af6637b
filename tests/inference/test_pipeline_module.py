"""``python -m pivot_monai.inference.pipeline``: the training guide's ``python -m src.eval.pipeline``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

MODULE = "pivot_monai.inference.pipeline"


def _run_as_main(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [MODULE, *argv])
    monkeypatch.delitem(sys.modules, MODULE, raising=False)  # as a fresh `python -m` (no runpy re-import warning)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(MODULE, run_name="__main__")
    return exit_info.value.code


def test_the_guides_eval_pipeline_command_runs_pivot_evaluate(monkeypatch, tmp_path):
    import pivot_monai.cli.inference as cli_inference
    import pivot_monai.inference.evaluate as evaluate_module

    calls = []
    monkeypatch.setattr(cli_inference, "settings_from_args", lambda args, model=None: "settings")
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: calls.append(args) or {"n_failed": 0})
    checkpoint, data, out = tmp_path / "model_best.pt", tmp_path / "test", tmp_path / "results"
    argv = ["--checkpoint", str(checkpoint), "--data-dir", str(data), "--output-dir", str(out)]
    assert _run_as_main(argv, monkeypatch) == 0
    assert calls == [(Path(checkpoint), Path(data), Path(out), "settings")]


def test_without_arguments_it_exits_2_naming_the_required_flags(monkeypatch, capsys):
    assert _run_as_main([], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "pivot evaluate" in err and "--checkpoint" in err and "--data-dir" in err
