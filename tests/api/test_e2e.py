"""End to end against real servers on 127.0.0.1 and the real bundle training on a tiny synthetic dataset.

``uvicorn pivot_monai.api.app:app`` first, then ``pivot serve`` on the same state: create a session, watch its
metrics appear, stop it and find the checkpoint, restart the server and find the session intact, resume it.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.live import (
    SESSIONS,
    free_port,
    kill_session_processes,
    live_server,
    pivot_serve_argv,
    poll,
    server_env,
    tiny_configs_root,
    uvicorn_argv,
)

pytestmark = pytest.mark.slow


def _train_records(client: httpx.Client, sid: str, since: int = 0) -> tuple[list[dict], int]:
    body = client.get(f"{SESSIONS}/{sid}/metrics", params={"since": since}).json()
    return [r for r in body["records"] if r["kind"] == "train"], body["next"]


def test_create_watch_stop_restart_resume(tiny_processed, tmp_path):
    env = server_env(tmp_path, tiny_configs_root(tmp_path / "configs", tiny_processed))
    port, log = free_port(), tmp_path / "server.log"
    with live_server(uvicorn_argv(port), env, port, log) as client:
        try:
            res = client.post(
                SESSIONS, json={"config_path": "tiny.yaml", "session_name": "e2e", "overrides": {"epochs": 500}}
            )
            assert res.status_code == 201, res.text
            sid = res.json()["session_id"]
            # 2. metrics appear, incrementally
            poll(client, f"{SESSIONS}/{sid}/metrics", lambda b: sum(r["kind"] == "train" for r in b["records"]) >= 2)
            first, nxt = _train_records(client, sid)
            later, nxt2 = _train_records(client, sid, since=nxt)
            assert [r["epoch"] for r in first[:2]] == [1, 2] and all(r["epoch"] > first[-1]["epoch"] for r in later)
            assert first[0]["loss"] > 0 and first[0]["lr"] > 0 and "detection" in first[0]["loss_components"]
            assert nxt2 >= nxt
            # 3. stop: graceful, with a checkpoint
            assert client.post(f"{SESSIONS}/{sid}/stop").status_code == 202
            stopped = poll(client, f"{SESSIONS}/{sid}", lambda s: s["status"] not in ("running", "stopping"))
            assert stopped["status"] == "stopped", stopped
            assert stopped["exit_code"] == 143  # graceful_stop: 128 + SIGTERM after the checkpoint is on disk
            ckpt = Path(stopped["resume_checkpoint"])
            assert ckpt.is_file() and ckpt.name.startswith("checkpoint_epoch=") and str(ckpt) in stopped["checkpoints"]
            assert client.post(f"{SESSIONS}/{sid}/stop").status_code == 409
        finally:
            kill_session_processes(client)
    # 4. a new server (pivot serve this time) on the same state finds the session intact
    port = free_port()
    with live_server(pivot_serve_argv(port), env, port, log) as client:
        try:
            assert client.get(f"{SESSIONS}/{sid}").json() == stopped
            # 5. resume: a second attempt continuing after the checkpoint's epoch
            res = client.post(f"{SESSIONS}/{sid}/resume")
            assert res.status_code == 202 and res.json()["resume_checkpoint"] == str(ckpt)
            stop_epoch = max(r["epoch"] for r in _train_records(client, sid)[0])
            poll(
                client,
                f"{SESSIONS}/{sid}/metrics",
                lambda b: any(r.get("attempt") == 2 and r["kind"] == "train" for r in b["records"]),
            )
            resumed = [r for r in _train_records(client, sid)[0] if r["attempt"] == 2]
            assert (
                resumed[0]["epoch"] == stop_epoch + 1 or resumed[0]["epoch"] == stop_epoch
            )  # mid-epoch: that epoch's rest
            logs = "\n".join(client.get(f"{SESSIONS}/{sid}/logs", params={"lines": 5000}).json()["lines"])
            assert f"resuming from {ckpt}" in logs
            running = client.get(f"{SESSIONS}/{sid}").json()
            assert running["status"] == "running" and running["attempts"] == 2
            client.post(f"{SESSIONS}/{sid}/stop")
            poll(client, f"{SESSIONS}/{sid}", lambda s: s["status"] == "stopped")
        finally:
            kill_session_processes(client)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _load_round(port: int, path: str, pollers: int, per_poller: int) -> dict:
    """``pollers`` threads, each with its own connection, send ``per_poller`` back-to-back GETs of ``path``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(pollers)

    def poller() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            c.get(path)  # connect first: the figures are request latencies
            start.wait()
            for _ in range(per_poller):  # bounded: per_poller requests, no sleeps, loopback only
                t0 = time.perf_counter()
                res = c.get(path)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if res.status_code != 200:
                        errors.append(res.text)

    threads = [threading.Thread(target=poller) for _ in range(pollers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert not errors and len(latencies) == pollers * per_poller, errors[:3]
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * _percentile(latencies, 0.95), 1),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def test_metrics_latency_under_20_concurrent_pollers(tiny_processed, tmp_path):
    """20 pollers GET /metrics (whole history, as a fresh dashboard does) while a session trains; three rounds."""
    env = server_env(tmp_path, tiny_configs_root(tmp_path / "configs", tiny_processed))
    port = free_port()
    with live_server(uvicorn_argv(port), env, port, tmp_path / "server.log") as client:
        try:
            body = {"config_path": "tiny.yaml", "overrides": {"epochs": 500}}
            sid = client.post(SESSIONS, json=body).json()["session_id"]
            poll(client, f"{SESSIONS}/{sid}/metrics", lambda b: sum(r["kind"] == "train" for r in b["records"]) >= 2)
            rounds = [_load_round(port, f"{SESSIONS}/{sid}/metrics", 20, 50) for _ in range(3)]
            records = client.get(f"{SESSIONS}/{sid}/metrics").json()["next"]
            status = client.get(f"{SESSIONS}/{sid}").json()["status"]
            client.post(f"{SESSIONS}/{sid}/stop")
        finally:
            kill_session_processes(client)
    figures = {"pollers": 20, "cpus": os.cpu_count(), "records_at_end": records, "status": status, "rounds": rounds}
    print(json.dumps(figures))
    if os.environ.get("PIVOT_API_LATENCY_JSON"):
        Path(os.environ["PIVOT_API_LATENCY_JSON"]).write_text(json.dumps(figures, indent=2) + "\n")
    assert status == "running"
    assert all(r["p95_ms"] < 2000 for r in rounds)
