"""The API routes over a stand-in training command: lifecycle, queue, metrics, logs and every error case."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.api.conftest import SESSIONS, create, wait_for


def _finished(session: dict) -> bool:
    return session["status"] not in ("queued", "running", "stopping")


def test_create_returns_201_with_session_id_and_runs_to_completion(make_client):
    with make_client() as client:
        session = create(client, session_name="exp 1", overrides={"epochs": 2, "learning_rate": 0.01})
        assert len(session["session_id"]) == 12
        assert session["config"]["config_path"] == "tiny.yaml"
        assert session["config"]["overrides"] == {"training#epochs": 2, "training#learning_rate": 0.01}
        assert session["max_epochs"] == 2
        done = wait_for(client, session["session_id"], _finished)
    assert done["status"] == "completed"
    assert done["exit_code"] == 0 and done["current_epoch"] == 2
    assert done["started_at"] and done["finished_at"] and done["created_at"] <= done["started_at"]
    assert [Path(p).name for p in done["checkpoints"]] == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


def test_list_returns_every_session_oldest_first(make_client):
    with make_client() as client:
        ids = [create(client)["session_id"] for _ in range(2)]
        listed = client.get(SESSIONS)
    assert listed.status_code == 200
    assert [s["session_id"] for s in listed.json()["sessions"]] == ids


def test_metrics_since_returns_only_new_records(make_client):
    with make_client() as client:
        sid = create(client)["session_id"]
        wait_for(client, sid, _finished)
        everything = client.get(f"{SESSIONS}/{sid}/metrics").json()
        later = client.get(f"{SESSIONS}/{sid}/metrics", params={"since": 4}).json()
    kinds = [r["kind"] for r in everything["records"]]
    assert kinds == ["val", "train"] * 3 + ["end"]
    assert everything["next"] == 7 and [r["seq"] for r in everything["records"]] == list(range(7))
    assert later["since"] == 4 and later["records"] == everything["records"][4:] and later["next"] == 7
    assert [r["loss"] for r in everything["records"] if r["kind"] == "train"] == [1.0, 0.5, 1 / 3]


def test_logs_return_the_tail_of_the_run_log(make_client):
    with make_client() as client:
        sid = create(client)["session_id"]
        wait_for(client, sid, _finished)
        lines = client.get(f"{SESSIONS}/{sid}/logs", params={"lines": 1}).json()["lines"]
        full = client.get(f"{SESSIONS}/{sid}/logs").json()["lines"]
    assert len(lines) == 1
    assert full[0].startswith("=== ") and "attempt 1" in full[0]
    assert any("fake training attempt 1" in line for line in full)


def test_stop_running_session_checkpoints_and_ends_stopped(make_client):
    with make_client(epoch_seconds=0.3) as client:
        sid = create(client, overrides={"epochs": 50})["session_id"]
        wait_for(client, sid, lambda s: (s["current_epoch"] or 0) >= 1)
        res = client.post(f"{SESSIONS}/{sid}/stop")
        assert res.status_code == 202 and res.json()["status"] in ("stopping", "stopped")
        stopped = wait_for(client, sid, _finished)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 143
    assert "_iteration=" in Path(stopped["resume_checkpoint"]).name
    assert stopped["resume_checkpoint"] in stopped["checkpoints"]


def test_stop_of_finished_session_is_409(make_client):
    with make_client() as client:
        sid = create(client)["session_id"]
        wait_for(client, sid, _finished)
        res = client.post(f"{SESSIONS}/{sid}/stop")
    assert res.status_code == 409
    assert res.json()["field"] == "status" and "completed" in res.json()["detail"]


def test_resume_continues_from_the_checkpoint_as_a_new_attempt(make_client):
    with make_client(epoch_seconds=0.2) as client:
        sid = create(client, overrides={"epochs": 6})["session_id"]
        wait_for(client, sid, lambda s: (s["current_epoch"] or 0) >= 2)
        client.post(f"{SESSIONS}/{sid}/stop")
        stopped = wait_for(client, sid, _finished)
        res = client.post(f"{SESSIONS}/{sid}/resume")
        assert res.status_code == 202 and res.json()["status"] in ("queued", "running")
        done = wait_for(client, sid, _finished)
        records = client.get(f"{SESSIONS}/{sid}/metrics").json()["records"]
        config = (Path(done["output_dir"]) / "session.yaml").read_text()
    assert done["status"] == "completed" and done["attempts"] == 2 and done["current_epoch"] == 6
    assert "checkpointing#resume: 'true'" in config
    first = [r["epoch"] for r in records if r["kind"] == "train" and r["attempt"] == 1]
    second = [r["epoch"] for r in records if r["kind"] == "train" and r["attempt"] == 2]
    assert second and second[0] == int(Path(stopped["resume_checkpoint"]).name.split("=")[1].split("_")[0]) + 1
    assert first[-1] < second[0] and second[-1] == 6


def test_resume_of_running_or_completed_session_is_409(make_client):
    with make_client(epoch_seconds=0.3) as client:
        running = create(client, overrides={"epochs": 50})["session_id"]
        wait_for(client, running, lambda s: s["status"] == "running")
        assert client.post(f"{SESSIONS}/{running}/resume").status_code == 409
        client.post(f"{SESSIONS}/{running}/stop")
        wait_for(client, running, _finished)
        done = create(client, overrides={"epochs": 1})["session_id"]
        wait_for(client, done, _finished)
        res = client.post(f"{SESSIONS}/{done}/resume")
    assert res.status_code == 409 and "completed" in res.json()["detail"]


def test_failed_run_is_failed_with_its_exit_code(make_client):
    with make_client(exit_code=3) as client:
        sid = create(client)["session_id"]
        failed = wait_for(client, sid, _finished)
    assert failed["status"] == "failed" and failed["exit_code"] == 3 and "code 3" in failed["error"]


def test_sessions_beyond_the_limit_queue_and_start_when_a_slot_frees(make_client):
    with make_client(epoch_seconds=0.2, max_concurrent=1) as client:
        first = create(client, overrides={"epochs": 50})["session_id"]
        second = create(client, overrides={"epochs": 1})["session_id"]
        wait_for(client, first, lambda s: s["status"] == "running")
        assert client.get(f"{SESSIONS}/{second}").json()["status"] == "queued"
        client.post(f"{SESSIONS}/{first}/stop")
        done = wait_for(client, second, _finished)
    assert done["status"] == "completed"


def test_stop_of_queued_session_stops_it_without_running(make_client):
    with make_client(epoch_seconds=0.3, max_concurrent=1) as client:
        first = create(client, overrides={"epochs": 50})["session_id"]
        queued = create(client)["session_id"]
        res = client.post(f"{SESSIONS}/{queued}/stop")
        client.post(f"{SESSIONS}/{first}/stop")
    assert res.status_code == 202 and res.json()["status"] == "stopped" and res.json()["attempts"] == 0


def test_guide_style_config_is_deep_merged_with_overrides_on_top(make_client):
    with make_client() as client:
        session = create(client, "guide.yaml", overrides={"epochs": 1})
        config = (Path(session["output_dir"]) / "session.yaml").read_text()
    assert "training#learning_rate: 0.01" in config and "data#patch_size:" in config
    assert "training#epochs: 1" in config and "training#optimizer" not in config  # only the user's leaves


def test_session_name_is_sanitised_into_the_folder_name(make_client, tmp_path):
    with make_client() as client:
        session = create(client, session_name="../../etc/passwd; rm -rf ~ ..")
    folder = Path(session["output_dir"])
    assert folder.parent == tmp_path / "runs" / "sessions"
    assert folder.name == f"etc_passwd_rm_-rf-{session['session_id']}"
    assert session["session_name"] == "../../etc/passwd; rm -rf ~ .."


def test_openapi_docs_are_served(make_client):
    with make_client() as client:
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
    assert {f"{SESSIONS}", f"{SESSIONS}/{{session_id}}/metrics", f"{SESSIONS}/{{session_id}}/resume"} <= set(paths)


# ------------------------------------------------------------------------------------------------ error cases
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("get", "/metrics"), ("get", "/logs"), ("post", "/stop"), ("post", "/resume")],
)
def test_unknown_session_id_is_404(make_client, method, suffix):
    with make_client() as client:
        res = getattr(client, method)(f"{SESSIONS}/0123456789ab{suffix}")
    assert res.status_code == 404
    assert res.json()["field"] == "session_id" and "0123456789ab" in res.json()["detail"]


def test_malformed_json_is_400(make_client):
    with make_client() as client:
        res = client.post(
            SESSIONS, content=b'{"config_path": "tiny.yaml",', headers={"content-type": "application/json"}
        )
    assert res.status_code == 400 and res.json()["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "config_path"),
        ({"config_path": 3}, "config_path"),
        ({"config_path": "tiny.yaml", "config": "imports: ['$import os']"}, "config"),
        ({"config_path": "tiny.yaml", "overrides": {"epochs": 0}}, "overrides.epochs"),
        ({"config_path": "tiny.yaml", "overrides": {"epochs": "3"}}, "overrides.epochs"),
        ({"config_path": "tiny.yaml", "overrides": {"learning_rate": -1.0}}, "overrides.learning_rate"),
        ({"config_path": "tiny.yaml", "overrides": {"batch_size": 2.5}}, "overrides.batch_size"),
        ({"config_path": "tiny.yaml", "overrides": {"patch_size": [16, 16]}}, "overrides.patch_size"),
        ({"config_path": "tiny.yaml", "overrides": {"device": "tpu"}}, "overrides.device"),
        ({"config_path": "tiny.yaml", "overrides": {"early_stopping": 1}}, "overrides.early_stopping"),
        ({"config_path": "tiny.yaml", "overrides": {"imports": ["$import os"]}}, "overrides.imports"),
        ({"config_path": "tiny.yaml", "overrides": {"training#epochs": 3}}, "overrides.training#epochs"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(make_client, body, field):
    with make_client() as client:
        res = client.post(SESSIONS, json=body)
        assert client.get(SESSIONS).json()["sessions"] == []
    assert res.status_code == 422, res.text
    assert res.json()["field"] == field


def test_patch_size_not_divisible_by_the_network_depth_is_422(make_client):
    with make_client() as client:
        res = client.post(SESSIONS, json={"config_path": "tiny.yaml", "overrides": {"patch_size": [16, 16, 18]}})
    assert res.status_code == 422 and res.json()["field"] == "overrides.patch_size"
    assert "divisible by 2 ** model.depth = 4" in res.json()["detail"]


def test_config_with_unknown_key_is_422_with_suggestion(make_client, configs_root):
    (configs_root / "typo.yaml").write_text("training:\n  epoch: 3\n")
    with make_client() as client:
        res = client.post(SESSIONS, json={"config_path": "typo.yaml"})
    assert res.status_code == 422 and res.json()["field"] == "config_path"
    assert "training.epoch" in res.json()["detail"] and "training.epochs" in res.json()["detail"]


@pytest.mark.parametrize("params", [{"since": -1}, {"since": "x"}])
def test_bad_since_is_422(make_client, params):
    with make_client() as client:
        sid = create(client)["session_id"]
        res = client.get(f"{SESSIONS}/{sid}/metrics", params=params)
    assert res.status_code == 422 and res.json()["field"] == "since"


def test_bad_logs_lines_is_422(make_client):
    with make_client() as client:
        sid = create(client)["session_id"]
        res = client.get(f"{SESSIONS}/{sid}/logs", params={"lines": 0})
    assert res.status_code == 422 and res.json()["field"] == "lines"


def test_a_stop_that_takes_longer_than_stop_timeout_is_killed(make_client):
    with make_client(epoch_seconds=5.0, stop_timeout=0.3) as client:
        sid = create(client, overrides={"epochs": 50})["session_id"]

        def started() -> bool:
            return any(
                "fake training attempt 1" in line for line in client.get(f"{SESSIONS}/{sid}/logs").json()["lines"]
            )

        deadline = time.monotonic() + 20
        while not started() and time.monotonic() < deadline:
            time.sleep(0.05)  # its SIGTERM handler is installed; it now sleeps through a 5 s epoch
        client.post(f"{SESSIONS}/{sid}/stop")
        stopped = wait_for(client, sid, _finished, timeout=4.0)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == -9
