"""The dashboard page in headless Chromium: a running session's loss and CPM curves appear, with a stop button."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.live import (
    SESSIONS,
    free_port,
    kill_session_processes,
    live_server,
    poll,
    server_env,
    tiny_configs_root,
    uvicorn_argv,
)

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` after 8 s of (virtual) page time: the page has polled the API a few times."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            f"--user-data-dir={profile}", "--window-size=1400,800", "--hide-scrollbars", "--virtual-time-budget=8000",
            *args, url]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_dashboard_shows_a_running_sessions_curves(tiny_processed, tmp_path):
    env = server_env(tmp_path, tiny_configs_root(tmp_path / "configs", tiny_processed))
    port = free_port()
    with live_server(uvicorn_argv(port), env, port, tmp_path / "server.log") as client:
        try:
            body = {"config_path": "tiny.yaml", "session_name": "dashboard demo", "overrides": {"epochs": 500}}
            sid = client.post(SESSIONS, json=body).json()["session_id"]
            poll(client, f"{SESSIONS}/{sid}/metrics", lambda b: sum(r["kind"] == "train" for r in b["records"]) >= 3)
            url = f"http://127.0.0.1:{port}/"
            dom = _chromium(url, tmp_path / "profile", "--dump-dom")
            shot = tmp_path / "dashboard.png"
            _chromium(url, tmp_path / "profile", f"--screenshot={shot}")
            status = client.get(f"{SESSIONS}/{sid}").json()["status"]
            client.post(f"{SESSIONS}/{sid}/stop")
        finally:
            kill_session_processes(client)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    points = {m[1]: int(m[2]) for m in re.finditer(r'<svg id="(loss-chart|cpm-chart)" data-points="(\d+)"', html)}
    assert status == "running"
    assert points["loss-chart"] >= 3 and points["cpm-chart"] >= 3, points
    assert re.search(r'<path class="line" stroke="#1f6feb" d="M[\d. ]+L', html)  # a drawn loss line
    assert f'data-session-id="{sid}"' in html and "dashboard demo" in html
    assert 'class="status running"' in html and '<button class="stop">stop</button>' in html
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("PIVOT_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PIVOT_DASHBOARD_SCREENSHOT"])
