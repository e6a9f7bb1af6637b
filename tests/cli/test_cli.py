"""The ``pivot`` command in-process: the registry, help and version, aliases, and the one error path."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from pivot_monai import __version__
from pivot_monai.cli import COMMANDS, build_parser, main
from tests.conftest import REPO_ROOT


def test_every_stage_is_registered_once_in_a_table_built_at_import():
    stages = ["synth", "preprocess", "split", "train", "infer", "evaluate", "export"]
    assert [name for name in COMMANDS if name in stages] == stages
    before = dict(COMMANDS)
    build_parser()
    build_parser()  # building the parser again changes nothing
    assert COMMANDS == before


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"pivot {__version__}"


def test_help_imports_no_torch_and_lists_every_command():
    code = "import sys; from pivot_monai.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().endswith("NO_TORCH"), proc.stdout[-500:] + proc.stderr[-500:]
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["preprocess", "-i", "raw", "-o", "out"], ("input", "output"), ("raw", "out")),
        (["preprocess", "--input-dir", "raw", "--output-dir", "out"], ("input", "output"), ("raw", "out")),
        (["split", "--data-dir", "p"], ("input",), ("p",)),
        (["synth", "--output-dir", "o"], ("output",), ("o",)),
        (["evaluate", "--checkpoint", "m.pt", "--data-dir", "d", "--output-dir", "e"], ("input", "output"), ("d", "e")),
        (
            ["export", "--checkpoint", "m.pt", "--format", "onnx", "-o", "m.onnx"],
            ("input", "output"),
            ("m.pt", "m.onnx"),
        ),
    ],
)
def test_input_and_output_flags_have_short_forms_and_keep_the_old_names(argv, dest, value):
    args = build_parser().parse_args(argv)
    assert tuple(str(getattr(args, d)) for d in dest) == value


def test_bad_input_is_one_line_with_exit_2_and_debug_adds_the_traceback(tmp_path, caplog):
    argv = ["infer", "--checkpoint", str(tmp_path / "none.pt"), "-i", str(tmp_path), "-o", str(tmp_path / "o")]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage() and not errors[0].exc_info
    assert "none.pt" in errors[0].getMessage() and "--debug" in errors[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--debug", *argv]) == 2
    assert any(r.exc_info for r in caplog.records)


def test_an_unknown_config_key_names_it_and_suggests_the_closest(tmp_path, caplog):
    user = tmp_path / "bad.yaml"
    user.write_text("data:\n  patch_sise: [32, 32, 32]\n")
    with caplog.at_level(logging.ERROR):
        assert main(["preprocess", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-c", str(user)]) == 2
    assert "unknown key 'data.patch_sise'; did you mean 'data.patch_size'" in caplog.text
    assert str(user) in caplog.text


def test_python_m_entry_points_run_the_same_commands():
    for module in ("pivot_monai.cli", "pivot_monai.train"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0 and "usage: pivot" in proc.stdout, proc.stderr[-500:]


@pytest.mark.parametrize("command", ["preprocess", "infer", "train-fpr"])
def test_config_given_twice_is_an_error_naming_both_files(tmp_path, capsys, command):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    with pytest.raises(SystemExit) as exc:
        main([command, "-i", str(tmp_path), "--config", str(first), "--config", str(second)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--config given twice ({first} and {second})" in err and "one file" in err
