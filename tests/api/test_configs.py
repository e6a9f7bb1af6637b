"""config_path checks (path traversal, symlinks), session-name sanitising and the generated session config."""

from __future__ import annotations

import os

import pytest

from pivot_monai.api.configs import (
    ConfigPathError,
    SessionConfigError,
    build_command,
    flatten_config,
    resolve_config_path,
    safe_name,
    session_config,
    validate_session_config,
)
from pivot_monai.config import ConfigKeyError, default_config_path
from tests.api.conftest import SESSIONS

BASE = default_config_path("train.yaml")


def test_relative_config_path_resolves_inside_the_root(configs_root):
    assert resolve_config_path("tiny.yaml", configs_root) == configs_root / "tiny.yaml"
    assert resolve_config_path("experiments/a.yaml", configs_root) == configs_root / "experiments" / "a.yaml"
    assert resolve_config_path("experiments/../tiny.yaml", configs_root) == configs_root / "tiny.yaml"


def test_absolute_path_inside_the_root_is_accepted(configs_root):
    assert resolve_config_path(str(configs_root / "tiny.yaml"), configs_root) == configs_root / "tiny.yaml"


@pytest.mark.parametrize(
    "path",
    ["../outside.yaml", "../../etc/passwd", "experiments/../../outside.yaml", "/etc/passwd", "/tmp/outside.yaml"],
)
def test_paths_outside_the_root_are_refused(configs_root, path):
    (configs_root.parent / "outside.yaml").write_text("training#epochs: 1\n")
    with pytest.raises(ConfigPathError, match="outside the configs root"):
        resolve_config_path(path, configs_root)


def test_symlink_escaping_the_root_is_refused(configs_root, tmp_path):
    secret = tmp_path / "elsewhere" / "evil.yaml"
    secret.parent.mkdir()
    secret.write_text("imports: ['$import os']\n")
    (configs_root / "link.yaml").symlink_to(secret)
    (configs_root / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    for path in ("link.yaml", "linkdir/evil.yaml"):
        with pytest.raises(ConfigPathError, match="outside the configs root"):
            resolve_config_path(path, configs_root)


def test_symlink_within_the_root_is_followed(configs_root):
    (configs_root / "alias.yaml").symlink_to(configs_root / "tiny.yaml")
    assert resolve_config_path("alias.yaml", configs_root) == configs_root / "tiny.yaml"


@pytest.mark.parametrize(
    ("path", "match"),
    [("missing.yaml", "no such config file"), ("experiments", "no such config file"), ("a\x00.yaml", "NUL")],
)
def test_missing_files_folders_and_nul_bytes_are_refused(configs_root, path, match):
    with pytest.raises(ConfigPathError, match=match):
        resolve_config_path(path, configs_root)


def test_non_config_suffix_is_refused(configs_root):
    (configs_root / "script.py").write_text("print(1)\n")
    with pytest.raises(ConfigPathError, match="must end in"):
        resolve_config_path("script.py", configs_root)


def test_symlink_loop_is_refused(configs_root):
    (configs_root / "loop.yaml").symlink_to(configs_root / "loop.yaml")
    with pytest.raises(ConfigPathError):
        resolve_config_path("loop.yaml", configs_root)


@pytest.mark.parametrize(
    "path", ["../outside.yaml", "/etc/passwd", "link.yaml", "experiments/../../outside.yaml", "nope.yaml"]
)
def test_route_answers_400_for_a_config_path_outside_the_root(make_client, configs_root, tmp_path, path):
    (configs_root.parent / "outside.yaml").write_text("training#epochs: 1\n")
    (configs_root / "link.yaml").symlink_to(configs_root.parent / "outside.yaml")
    with make_client() as client:
        res = client.post(SESSIONS, json={"config_path": path})
        assert client.get(SESSIONS).json()["sessions"] == []
    assert res.status_code == 400 and res.json()["field"] == "config_path"
    assert not (tmp_path / "runs" / "sessions").exists() or not any((tmp_path / "runs" / "sessions").iterdir())


def test_a_config_swapped_for_an_escaping_symlink_after_create_fails_at_launch(configs_root, tmp_path):
    target = configs_root / "later.yaml"
    target.write_text("training#epochs: 1\n")
    resolve_config_path("later.yaml", configs_root)
    target.unlink()
    os.symlink(tmp_path / "outside.yaml", target)
    (tmp_path / "outside.yaml").write_text("training#epochs: 1\n")
    with pytest.raises(ConfigPathError):
        resolve_config_path(str(target), configs_root)  # what the supervisor re-checks before every launch


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("experiment_001", "experiment_001"),
        ("../../etc", "etc"),
        ("a/b\\c", "a_b_c"),
        ("..", "session"),
        ("", "session"),
        (None, "session"),
        (".hidden", "hidden"),
        ("a..b", "a_b"),
        ("名前 with spaces", "with_spaces"),
        ("x" * 300, "x" * 48),
    ],
)
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_flatten_config_gives_one_id_per_leaf_and_keeps_free_form_mappings_whole():
    flat = flatten_config(
        {"training": {"epochs": 2, "optimizer": {"betas": [0.9, 0.99]}}, "model": {"kwargs": {"a": 1}}}
    )
    assert flat == {"training#epochs": 2, "training#optimizer#betas": [0.9, 0.99], "model#kwargs": {"a": 1}}


def test_session_config_layers_overrides_outputs_metrics_hook_and_resume(configs_root, tmp_path):
    out = tmp_path / "s"
    cfg = session_config(configs_root / "guide.yaml", BASE, {"training#epochs": 5}, out, attempt=2, resume=True)
    assert cfg["training#epochs"] == 5 and cfg["training#learning_rate"] == 0.01
    assert cfg["checkpointing#dir"] == str(out / "models") and cfg["logging#log_dir"] == str(out / "logs")
    assert cfg["checkpointing#resume"] == "true"
    assert cfg["initialize"][-1].endswith(f"{str(out / 'metrics.jsonl')!r}, @loss, 2)")
    assert len(cfg["initialize"]) > 1  # train.yaml's own steps first
    fresh = session_config(configs_root / "tiny.yaml", BASE, {}, out)
    assert fresh["checkpointing#resume"] == "false" and fresh["model#depth"] == 2


def test_the_base_config_itself_adds_no_keys(tmp_path):
    cfg = session_config(BASE, BASE, {}, tmp_path)
    assert set(cfg) == {"checkpointing#dir", "logging#log_dir", "checkpointing#resume", "initialize", "imports"}


def test_unknown_config_key_is_a_config_key_error(configs_root):
    (configs_root / "typo.yaml").write_text("trainig#epochs: 2\n")
    with pytest.raises(ConfigKeyError, match="did you mean 'training'"):
        validate_session_config(configs_root / "typo.yaml", BASE, {})


def test_non_mapping_config_is_a_session_config_error(configs_root):
    (configs_root / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SessionConfigError, match="list.yaml"):
        validate_session_config(configs_root / "list.yaml", BASE, {})


def test_build_command_is_the_bundle_training_command(tmp_path):
    argv = build_command(BASE, tmp_path / "session.yaml")
    assert argv[1:5] == ["-m", "monai.bundle", "run", "training"]
    assert argv[5:] == ["--config_file", repr([str(BASE), str(tmp_path / "session.yaml")])]


def test_a_session_config_in_the_guides_names_runs_in_pivots(configs_root, tmp_path):
    (configs_root / "guide_names.yaml").write_text(
        "training:\n  optimizer: adamw\n  lr_scheduler: {type: cosine, T_max: 8}\n"
        "checkpointing: {save_dir: elsewhere}\n"
    )
    validate_session_config(configs_root / "guide_names.yaml", BASE, {})
    cfg = session_config(configs_root / "guide_names.yaml", BASE, {}, tmp_path / "s")
    assert cfg["training#optimizer#type"] == "adamw" and cfg["training#scheduler#t_max"] == 8
    assert not any(k.startswith("training#lr_scheduler") for k in cfg)
    assert cfg["checkpointing#dir"] == str(tmp_path / "s" / "models")  # the session's own folder wins


def test_a_guide_key_pivot_cannot_honour_is_a_session_config_error(configs_root):
    (configs_root / "guide_bad.yaml").write_text("model: {type: unet, out_channels: 3}\n")
    with pytest.raises(SessionConfigError, match="out_channels"):
        validate_session_config(configs_root / "guide_bad.yaml", BASE, {})
