"""API test fixtures: a configs root, a test client over a stand-in training command, polling helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the training API needs its extra: pip install -e ".[api]"')

with warnings.catch_warnings():  # Starlette's notice about httpx vs httpx2, once per process
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from pivot_monai.api.app import create_app  # noqa: E402
from pivot_monai.api.settings import ServerSettings  # noqa: E402

FAKE_TRAINING = Path(__file__).resolve().parent / "fake_training.py"
SESSIONS = "/api/v1/training/sessions"


def fake_command(base_config: Path, session_file: Path) -> list[str]:
    return [sys.executable, str(FAKE_TRAINING), str(session_file)]


@pytest.fixture
def configs_root(tmp_path) -> Path:
    """A configs root with ``tiny.yaml`` (MONAI ``#`` keys) and ``guide.yaml`` (the guide's nested sections)."""
    root = tmp_path / "configs"
    (root / "experiments").mkdir(parents=True)
    (root / "tiny.yaml").write_text("training#epochs: 3\nmodel#depth: 2\n")
    (root / "guide.yaml").write_text(
        "training:\n  epochs: 2\n  learning_rate: 0.01\ndata:\n  patch_size: [32, 32, 32]\n"
    )
    (root / "experiments" / "a.yaml").write_text("training#epochs: 2\n")
    return root


@pytest.fixture
def make_client(tmp_path, configs_root) -> Iterator[Callable[..., contextlib.AbstractContextManager[TestClient]]]:
    """``with make_client(**settings) as client``: a served app (lifespan run) over the stand-in training."""
    pids: list[int] = []

    @contextlib.contextmanager
    def _make(epoch_seconds: float = 0.05, exit_code: int = 0, **settings) -> Iterator[TestClient]:
        values = {
            "runs_dir": tmp_path / "runs",
            "configs_root": configs_root,
            "poll_interval": 0.05,
            "extra_env": {"FAKE_EPOCH_SECONDS": str(epoch_seconds), "FAKE_EXIT_CODE": str(exit_code)},
            **settings,
        }
        app = create_app(ServerSettings(**values), command=fake_command)
        with TestClient(app) as client:
            yield client
            active = client.app.state.manager.store.list(("running", "stopping"))
            pids.extend(row["pid"] for row in active if row["pid"])

    yield _make
    for pid in pids:  # stand-ins the test left running
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def wait_for(client: TestClient, session_id: str, predicate: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    """Poll ``GET /sessions/{id}`` until ``predicate(session)``; the last state in the error otherwise."""
    deadline, session = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        session = client.get(f"{SESSIONS}/{session_id}").json()
        if predicate(session):
            return session
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s; last state {session}")


def create(client: TestClient, config_path: str = "tiny.yaml", **body) -> dict:
    res = client.post(SESSIONS, json={"config_path": config_path, **body})
    assert res.status_code == 201, res.text
    return res.json()
