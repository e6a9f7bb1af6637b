"""State across server restarts: sessions intact, live runs adopted, runs that died meanwhile interrupted."""

from __future__ import annotations

import contextlib
import os
import signal

from pivot_monai.api.store import SessionStore
from tests.api.conftest import SESSIONS, create, wait_for


def _finished(session: dict) -> bool:
    return session["status"] not in ("queued", "running", "stopping")


def _reap(pid: int) -> None:
    """Wait for a killed run (a child of this test process, as a real server's is not once that server exits)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_restart_keeps_every_session_as_it_was(make_client):
    with make_client() as client:
        sid = create(client, session_name="keep me", overrides={"epochs": 2})["session_id"]
        before = wait_for(client, sid, _finished)
    with make_client() as client:
        after = client.get(f"{SESSIONS}/{sid}").json()
        records = client.get(f"{SESSIONS}/{sid}/metrics").json()["records"]
    assert after == before
    assert len(records) == 5


def test_a_run_still_training_across_a_restart_is_adopted_and_finishes(make_client):
    with make_client(epoch_seconds=0.3) as client:
        sid = create(client, overrides={"epochs": 6})["session_id"]
        running = wait_for(client, sid, lambda s: (s["current_epoch"] or 0) >= 1)
    os.kill(running["pid"], 0)  # the server is down, the training process is not
    with make_client() as client:
        assert client.get(f"{SESSIONS}/{sid}").json()["status"] == "running"
        done = wait_for(client, sid, _finished)
    assert done["status"] == "completed" and done["current_epoch"] == 6
    assert done["exit_code"] is None  # not this server's child: the metrics log's end record decided


def test_an_adopted_run_can_be_stopped(make_client):
    with make_client(epoch_seconds=0.3) as client:
        sid = create(client, overrides={"epochs": 50})["session_id"]
        wait_for(client, sid, lambda s: (s["current_epoch"] or 0) >= 1)
    with make_client() as client:
        assert client.post(f"{SESSIONS}/{sid}/stop").status_code == 202
        stopped = wait_for(client, sid, _finished)
    assert stopped["status"] == "stopped" and "_iteration=" in stopped["resume_checkpoint"]


def test_a_run_that_died_while_the_server_was_down_is_interrupted_and_resumable(make_client):
    with make_client(epoch_seconds=0.3) as client:
        sid = create(client, overrides={"epochs": 8})["session_id"]
        running = wait_for(client, sid, lambda s: (s["current_epoch"] or 0) >= 2)
    os.killpg(running["pid"], signal.SIGKILL)
    _reap(running["pid"])
    with make_client(epoch_seconds=0.05) as client:
        interrupted = client.get(f"{SESSIONS}/{sid}").json()
        assert interrupted["status"] == "interrupted", interrupted
        assert interrupted["resume_checkpoint"] and "checkpoint_epoch=" in interrupted["resume_checkpoint"]
        assert "resume" in interrupted["error"]
        assert client.post(f"{SESSIONS}/{sid}/resume").status_code == 202
        done = wait_for(client, sid, _finished)
    assert done["status"] == "completed" and done["attempts"] == 2 and done["current_epoch"] == 8


def test_a_run_killed_by_a_signal_while_watched_is_interrupted(make_client):
    with make_client(epoch_seconds=0.3) as client:
        sid = create(client, overrides={"epochs": 50})["session_id"]
        running = wait_for(client, sid, lambda s: s["status"] == "running")
        os.kill(running["pid"], signal.SIGKILL)
        dead = wait_for(client, sid, _finished)
    assert dead["status"] == "interrupted" and dead["exit_code"] == -9


def test_a_recycled_pid_is_not_mistaken_for_the_run(make_client, tmp_path):
    with make_client() as client:
        sid = create(client, overrides={"epochs": 1})["session_id"]
        wait_for(client, sid, _finished)
    store = SessionStore(tmp_path / "runs" / "sessions.db")
    store.update(sid, status="running", pid=os.getpid())  # a live process that is not this session's run
    store.close()
    with make_client() as client:
        after = client.get(f"{SESSIONS}/{sid}").json()
    assert after["status"] == "completed"  # its metrics log ends with the attempt's end record


def test_store_update_with_expect_only_moves_from_the_expected_status(tmp_path):
    store = SessionStore(tmp_path / "s.db")
    store.insert("abc", name="n", output_dir="/x", config_path="c", config_file="/c", overrides={"a#b": 1})
    assert store.update("abc", expect=("running",), status="stopped") is False
    assert store.update("abc", expect=("queued",), status="running") is True
    assert store.get("abc")["status"] == "running" and store.get("abc")["overrides"] == {"a#b": 1}
    assert store.update("nope", status="running") is False
    store.close()
