"""The session supervisor: one training subprocess per session, a queue, graceful stop, resume, restart recovery.

Life of a session::

    queued --(a slot frees)--> running --(stop: SIGTERM)--> stopping --(process exits)--> stopped
                                  |--(exit 0)--> completed      |--(exit > 0)--> failed
                                  |--(killed by a signal, or died while the server was down)--> interrupted
    stopped | failed | interrupted --(resume)--> queued --> running (from the newest resumable checkpoint)

Each launch runs the user's own command, ``python -m monai.bundle run training --config_file
"['train.yaml', '<session>/session.yaml']"``, in its own process group (``start_new_session``), so a server
restart leaves training running: the restarted server adopts a live process (recognised by its session folder on
the command line) and marks a dead one ``interrupted`` (or ``completed``/``stopped`` when its metrics log or stop
request says so). A stop sends SIGTERM to the training process only (its data-loader workers must stay alive while
it writes its checkpoint) and SIGKILL to the whole group after ``stop_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivot_monai.api.configs import (
    build_command,
    resolve_config_path,
    safe_name,
    session_config,
    validate_session_config,
    write_session_config,
)
from pivot_monai.api.outputs import MetricsReader, checkpoints, resumable_checkpoint, tail_lines
from pivot_monai.api.schemas import SessionCreate
from pivot_monai.api.settings import ServerSettings
from pivot_monai.api.store import SessionStore, utc_now

__all__ = ["SessionConflict", "SessionManager", "SessionNotFound"]

logger = logging.getLogger(__name__)

ACTIVE = ("running", "stopping")
RESUMABLE = ("stopped", "failed", "interrupted")
CommandBuilder = Callable[[Path, Path], list[str]]
# exit status of a run stopped gracefully by a signal: 128 + signal number (pivot_monai.handlers.graceful_stop)
_SIGNAL_EXITS = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}


class SessionNotFound(LookupError):
    """No session has this id (HTTP 404)."""


class SessionConflict(RuntimeError):
    """The request does not fit the session's status (HTTP 409)."""


def _process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line contains ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs: trust the signal check
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


class SessionManager:
    """Creates, supervises, stops and resumes the training sessions of one server.

    Args:
        settings: the server settings.
        store: the SQLite state.
        command: ``(base_config, session_file) -> argv`` of a launch. Default the bundle training command
            (:func:`~pivot_monai.api.configs.build_command`); tests substitute a stand-in.
    """

    def __init__(self, settings: ServerSettings, store: SessionStore, command: CommandBuilder | None = None) -> None:
        self.settings, self.store = settings, store
        self.command = command or build_command
        self.metrics_reader = MetricsReader()
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._adopted: dict[str, int] = {}
        self._kill_at: dict[str, float] = {}
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover the sessions of a previous server, then supervise in a background thread."""
        self.recover()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name="pivot-api-supervisor", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop supervising; training processes keep running and a restarted server adopts them."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._procs.clear()  # the processes go on; a restarted server adopts them (recover)

    def _loop(self) -> None:
        while not self._stop_event.wait(self.settings.poll_interval):
            try:
                self.poll()
            except Exception:  # the supervisor must outlive any one bad session
                logger.exception("session supervisor")

    def recover(self) -> None:
        """Adopt live training processes of the sessions left running; finish the dead ones."""
        with self._lock:
            for row in self.store.list(ACTIVE):
                pid = row["pid"]
                if pid and _process_alive(pid, row["output_dir"]):
                    logger.info("session %s: adopting its running training process %d", row["id"], pid)
                    self._adopted[row["id"]] = pid
                    if row["status"] == "stopping":
                        self._kill_at[row["id"]] = time.monotonic() + self.settings.stop_timeout
                else:
                    self._finish(row, None)
            self._schedule()

    # ------------------------------------------------------------------------------------------ requests
    def create(self, request: SessionCreate) -> dict[str, Any]:
        """Check the config and overrides, make the session folder and queue the session.

        Raises:
            ConfigPathError: ``config_path`` is not a config file inside the configs root.
            ConfigKeyError, SessionConfigError: the config or an override would fail the run (HTTP 422).
        """
        config_file = resolve_config_path(request.config_path, self.settings.configs_root)
        overrides = request.overrides.config_ids() if request.overrides else {}
        merged = validate_session_config(config_file, self.settings.base_config, overrides)
        epochs = overrides.get("training#epochs", (merged.get("training") or {}).get("epochs"))
        session_id = uuid.uuid4().hex[:12]
        name = request.session_name or config_file.stem
        output_dir = self.settings.sessions_dir / f"{safe_name(name)}-{session_id}"
        output_dir.mkdir(parents=True, exist_ok=False)
        row = self.store.insert(
            session_id,
            name=name,
            output_dir=str(output_dir),
            config_path=str(config_file.relative_to(self.settings.configs_root)),
            config_file=str(config_file),
            overrides=overrides,
            max_epochs=epochs if isinstance(epochs, int) else None,
        )
        logger.info("session %s (%s) queued: %s %s", session_id, name, row["config_path"], overrides or "")
        with self._lock:
            self._schedule()
        return self.get(session_id)

    def get(self, session_id: str) -> dict[str, Any]:
        row = self.store.get(session_id)
        if row is None:
            raise SessionNotFound(
                f"no training session with id {session_id!r}; GET /api/v1/training/sessions lists them"
            )
        return row

    def list(self) -> list[dict[str, Any]]:
        return self.store.list()

    def stop(self, session_id: str) -> dict[str, Any]:
        """Stop a session: a queued one at once, a running one by SIGTERM (it checkpoints and exits).

        Raises:
            SessionNotFound: unknown id.
            SessionConflict: the session has already finished.
        """
        with self._lock:
            row = self.get(session_id)
            status, now = row["status"], utc_now()
            if status == "queued":
                self.store.update(
                    session_id, expect=("queued",), status="stopped", stop_requested_at=now, finished_at=now
                )
            elif status == "running":
                self.store.update(session_id, expect=("running",), status="stopping", stop_requested_at=now)
                self._kill_at[session_id] = time.monotonic() + self.settings.stop_timeout
                self._signal(row, signal.SIGTERM)
                logger.info("session %s: stop requested (SIGTERM to %s)", session_id, row["pid"])
            elif status != "stopping":
                raise SessionConflict(
                    f"session {session_id} is {status}; only queued or running sessions can be stopped"
                )
            return self.get(session_id)

    def resume(self, session_id: str) -> dict[str, Any]:
        """Queue a stopped, failed or interrupted session again, continuing from its newest resumable checkpoint.

        A session that wrote no resumable checkpoint starts over (``resume_checkpoint`` is then ``null``).

        Raises:
            SessionNotFound: unknown id.
            SessionConflict: the session is queued, running, stopping or completed.
        """
        with self._lock:
            row = self.get(session_id)
            if row["status"] not in RESUMABLE:
                raise SessionConflict(
                    f"session {session_id} is {row['status']}; only {', '.join(RESUMABLE)} sessions can be resumed"
                )
            ckpt = resumable_checkpoint(Path(row["output_dir"]))
            self.store.update(
                session_id,
                expect=(row["status"],),
                status="queued",
                resume_from=str(ckpt) if ckpt else None,
                finished_at=None,
                stop_requested_at=None,
                exit_code=None,
                error=None,
            )
            logger.info("session %s: resume queued from %s", session_id, ckpt or "the start (no checkpoint)")
            self._schedule()
            return self.get(session_id)

    def metrics(self, session_id: str, since: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        """``(session row, records[since:], next since)``."""
        row = self.get(session_id)
        records = self.metrics_reader.records(Path(row["output_dir"]) / "metrics.jsonl")
        return row, records[since:], len(records)

    def logs(self, session_id: str, lines: int = 200) -> list[str]:
        row = self.get(session_id)
        return tail_lines(Path(row["output_dir"]) / "train.log", lines)

    def describe(self, row: dict[str, Any]) -> dict[str, Any]:
        """The API view of a session row (``SessionOut`` fields)."""
        out = Path(row["output_dir"])
        records = self.metrics_reader.records(out / "metrics.jsonl")
        epoch = next((r.get("epoch") for r in reversed(records) if r.get("kind") == "train"), None)
        if row["status"] in RESUMABLE:  # what a resume would continue from now
            newest = resumable_checkpoint(out)
            resume = str(newest) if newest else None
        else:  # what the current attempt continued from (None for a first attempt and once completed)
            resume = row["resume_from"] if row["status"] != "completed" else None
        return {
            "session_id": row["id"],
            "session_name": row["name"],
            "status": row["status"],
            "config": {
                "config_path": row["config_path"],
                "overrides": row["overrides"],
                "session_config": str(out / "session.yaml"),
            },
            "output_dir": str(out),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "current_epoch": epoch,
            "max_epochs": row["max_epochs"],
            "checkpoints": [str(p) for p in checkpoints(out)],
            "resume_checkpoint": resume,
            "attempts": row["attempts"],
            "pid": row["pid"] if row["status"] in ACTIVE else None,
            "exit_code": row["exit_code"],
            "error": row["error"],
        }

    # ------------------------------------------------------------------------------------------ supervision
    def poll(self) -> None:
        """Finish sessions whose process ended, kill overdue stops, start queued sessions in free slots."""
        with self._lock:
            for session_id, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None:
                    self._kill_if_overdue(session_id, proc.pid)
                    continue
                del self._procs[session_id]
                self._finish(self.store.get(session_id), code)
            for session_id, pid in list(self._adopted.items()):
                row = self.store.get(session_id)
                if row is not None and _process_alive(pid, row["output_dir"]):
                    self._kill_if_overdue(session_id, pid)
                    continue
                del self._adopted[session_id]
                if row is not None:
                    self._finish(row, None)
            self._schedule()

    def _schedule(self) -> None:
        active = len(self._procs) + len(self._adopted)
        for row in self.store.list(("queued",)):
            if active >= self.settings.max_concurrent:
                break
            try:
                self._launch(row)
            except Exception as err:  # a session that cannot start fails; the queue goes on
                logger.exception("session %s could not start", row["id"])
                self.store.update(row["id"], status="failed", finished_at=utc_now(), error=f"could not start: {err}")
                continue
            active += 1

    def _launch(self, row: dict[str, Any]) -> None:
        out, attempt = Path(row["output_dir"]), row["attempts"] + 1
        config = session_config(
            resolve_config_path(row["config_file"], self.settings.configs_root),
            self.settings.base_config,
            row["overrides"],
            out,
            attempt=attempt,
            resume=bool(row["resume_from"]),
        )
        session_file = write_session_config(config, out / "session.yaml")
        argv = self.command(self.settings.base_config, session_file)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.settings.extra_env}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with (out / "train.log").open("ab") as log:
            log.write(f"=== {utc_now()} attempt {attempt}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=self.settings.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._procs[row["id"]] = proc
        self.store.update(
            row["id"],
            status="running",
            pid=proc.pid,
            attempts=attempt,
            started_at=utc_now(),
            finished_at=None,
            exit_code=None,
            error=None,
        )
        logger.info("session %s: attempt %d started (pid %d)", row["id"], attempt, proc.pid)

    def _finish(self, row: dict[str, Any], code: int | None) -> None:
        """Record the end of a session's process (``code`` ``None``: not our child, exit status unknown)."""
        self._kill_at.pop(row["id"], None)
        error = None
        if row["status"] == "stopping" or row["stop_requested_at"]:
            status = "stopped"
        elif code == 0:
            status = "completed"
        elif code is None:
            status = "completed" if self._ended_cleanly(row) else "interrupted"
            if status == "interrupted":
                error = "the training process ended while the server was not watching it; resume continues it"
        elif code < 0:
            status, error = "interrupted", f"the training process was killed by signal {-code}"
        elif code in _SIGNAL_EXITS:  # a graceful stop that did not come from this server (a shutdown, Ctrl-C)
            status, error = "interrupted", f"training stopped on {_SIGNAL_EXITS[code]} (exit code {code})"
        else:
            status, error = "failed", f"training exited with code {code}; GET .../logs shows why"
        self.store.update(row["id"], status=status, exit_code=code, finished_at=utc_now(), pid=None, error=error)
        logger.info("session %s: %s (exit code %s)", row["id"], status, code)

    def _ended_cleanly(self, row: dict[str, Any]) -> bool:
        records = self.metrics_reader.records(Path(row["output_dir"]) / "metrics.jsonl")
        last = records[-1] if records else {}
        return last.get("kind") == "end" and last.get("attempt") == row["attempts"]

    def _signal(self, row: dict[str, Any], sig: int, group: bool = False) -> None:
        pid = row["pid"]
        if not pid:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)  # start_new_session: the group id is the training process's pid
            else:
                os.kill(pid, sig)

    def _kill_if_overdue(self, session_id: str, pid: int) -> None:
        deadline = self._kill_at.get(session_id)
        if deadline is not None and time.monotonic() > deadline:
            logger.warning(
                "session %s: no exit %.0f s after SIGTERM; killing it", session_id, self.settings.stop_timeout
            )
            self._signal({"pid": pid}, signal.SIGKILL, group=True)
            self._kill_at.pop(session_id, None)
