"""Reading a run's outputs: incremental metrics parsing, the log's tail, the checkpoint to resume from."""

from __future__ import annotations

import os

from pivot_monai.api.outputs import MetricsReader, checkpoints, resumable_checkpoint, tail_lines


def test_metrics_reader_parses_appended_lines_and_waits_for_a_partial_one(tmp_path):
    path, reader = tmp_path / "metrics.jsonl", MetricsReader()
    assert reader.records(path) == []
    path.write_text('{"kind": "train", "epoch": 1}\n{"kind": "val", "ep')
    assert reader.records(path) == [{"kind": "train", "epoch": 1, "seq": 0}]
    with path.open("a") as f:
        f.write('och": 1}\nnot json\n[1, 2]\n{"kind": "train", "epoch": 2}\n')
    assert [(r["kind"], r["seq"]) for r in reader.records(path)] == [("train", 0), ("val", 1), ("train", 2)]


def test_metrics_reader_starts_over_when_the_file_is_replaced(tmp_path):
    path, reader = tmp_path / "metrics.jsonl", MetricsReader()
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert len(reader.records(path)) == 2
    path.unlink()
    path.write_text('{"b": 1}\n')
    assert reader.records(path) == [{"b": 1, "seq": 0}]


def test_tail_lines_returns_the_last_lines_or_nothing(tmp_path):
    log = tmp_path / "train.log"
    assert tail_lines(log) == []
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    assert tail_lines(log, 3) == ["line 497", "line 498", "line 499"]
    assert len(tail_lines(log)) == 200


def test_resumable_checkpoint_is_the_newest_trainer_checkpoint(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    assert resumable_checkpoint(tmp_path) is None
    for i, name in enumerate(["checkpoint_epoch=2.pt", "checkpoint_epoch=3_iteration=7.pt", "model.pt", "x.pt"]):
        (models / name).write_bytes(b"w")
        os.utime(models / name, (1000 + i, 1000 + i))
    (models / "checkpoint_epoch=9.pt").write_bytes(b"")  # empty: an interrupted write
    assert resumable_checkpoint(tmp_path) == models / "checkpoint_epoch=3_iteration=7.pt"
    assert [p.name for p in checkpoints(tmp_path)][:4] == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3_iteration=7.pt",
        "model.pt",
        "x.pt",
    ]
