"""The sessions table in SQLite: what survives a server restart.

One row per session; metrics stay in the run's own ``metrics.jsonl``. The connection is shared by the request
threads and the supervisor thread behind one lock, in WAL mode so a reader never waits for a writer's fsync.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["SessionStore", "utc_now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    status TEXT NOT NULL,
    config_path TEXT NOT NULL,
    config_file TEXT NOT NULL,
    overrides TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    stop_requested_at TEXT,
    pid INTEGER,
    exit_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_epochs INTEGER,
    resume_from TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status, seq);
"""
_COLUMNS = (
    "name", "output_dir", "status", "config_path", "config_file", "overrides", "updated_at", "started_at",
    "finished_at", "stop_requested_at", "pid", "exit_code", "attempts", "max_epochs", "resume_from",
    "error",
)  # fmt: skip


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (``2026-12-06T20:01:02.345Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SessionStore:
    """The SQLite file of one server.

    Args:
        path: the database file (its folder is created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        out["overrides"] = json.loads(out["overrides"])
        return out

    def insert(self, session_id: str, **fields: Any) -> dict[str, Any]:
        """Add a session (``status`` queued unless given); returns the row."""
        now = utc_now()
        values = {"status": "queued", "attempts": 0, "created_at": now, "updated_at": now, **fields}
        values["overrides"] = json.dumps(values.get("overrides") or {})
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions").fetchone()[0]
            names = ["id", "seq", *values]
            self._db.execute(
                f"INSERT INTO sessions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [session_id, seq, *values.values()],
            )
        return self.get(session_id)

    def get(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return self._row(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Sessions oldest first, optionally only those in ``statuses``."""
        query, args = "SELECT * FROM sessions", ()
        if statuses:
            query, args = f"{query} WHERE status IN ({', '.join('?' * len(statuses))})", statuses
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY seq", args).fetchall()
        return [self._row(r) for r in rows]

    def update(self, session_id: str, expect: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set ``fields`` (and ``updated_at``); with ``expect``, only while the status is one of those.

        Returns:
            whether a row changed (``False``: unknown id, or the status moved on meanwhile).
        """
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown session columns {sorted(unknown)}")
        if "overrides" in fields:
            fields["overrides"] = json.dumps(fields["overrides"])
        fields["updated_at"] = utc_now()
        query = f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        args: list[Any] = [*fields.values(), session_id]
        if expect:
            query += f" AND status IN ({', '.join('?' * len(expect))})"
            args += list(expect)
        with self._lock:
            return self._db.execute(query, args).rowcount > 0
