"""A real API server on 127.0.0.1 for the end-to-end and browser tests, and a tiny real training config."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, TINY_OVERRIDES

SESSIONS = "/api/v1/training/sessions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_configs_root(root: Path, dataset_dir: Path) -> Path:
    """A configs root whose ``tiny.yaml`` trains the tests' tiny network on ``dataset_dir`` in ~1 s per epoch."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"dataset_dir: {str(dataset_dir)!r}", "device#num_threads: 1", "checkpointing#save_interval: 1"]
    lines += [f"{k.lstrip('-')}: {v}" for k, v in zip(TINY_OVERRIDES[::2], TINY_OVERRIDES[1::2])]
    (root / "tiny.yaml").write_text("\n".join(lines) + "\n")
    return root


@contextlib.contextmanager
def live_server(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[httpx.Client]:
    """Run ``argv`` (a server on 127.0.0.1:``port``) until the block ends; yields a client once it answers."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if client.get(SESSIONS).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not answer in 120 s: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield client
    finally:
        client.close()
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown; training sessions keep running
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uvicorn_argv(port: int) -> list[str]:
    """The documented ``uvicorn pivot_monai.api.app:app`` command."""
    return [sys.executable, "-m", "uvicorn", "pivot_monai.api.app:app", "--host", "127.0.0.1", "--port", str(port)]


def pivot_serve_argv(port: int) -> list[str]:
    """``pivot serve`` (settings from the same ``PIVOT_API_*`` environment)."""
    return [sys.executable, "-m", "pivot_monai.cli", "serve", "--port", str(port)]


def server_env(tmp_path: Path, configs_root: Path) -> dict[str, str]:
    return {
        "PIVOT_API_CONFIGS_ROOT": str(configs_root),
        "PIVOT_API_RUNS_DIR": str(tmp_path / "runs"),
        "PIVOT_API_DB": str(tmp_path / "state" / "sessions.db"),
        "OMP_NUM_THREADS": "1",
    }


def poll(client: httpx.Client, path: str, predicate: Callable[[dict], bool], timeout: float = 180.0) -> dict:
    """GET ``path`` until ``predicate(body)``; the last body in the error otherwise."""
    deadline, body = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if predicate(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s on {path}; last {body}")


def kill_session_processes(client: httpx.Client) -> None:
    """SIGKILL the process group of every session still training (test cleanup)."""
    with contextlib.suppress(Exception):
        for s in client.get(SESSIONS).json()["sessions"]:
            if s.get("pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(s["pid"], signal.SIGKILL)
