"""Bearer token on every route, loopback-only binding without a token, and `pivot serve`'s refusal."""

from __future__ import annotations

import asyncio

import pytest

from pivot_monai.api.app import check_bind, create_app
from pivot_monai.api.server import serve
from pivot_monai.api.settings import ServerSettings, is_loopback
from pivot_monai.cli import main as pivot
from tests.api.conftest import SESSIONS, create

TOKEN = "s3cret-token"
ROUTES = [
    ("get", "/"),
    ("get", "/docs"),
    ("get", "/openapi.json"),
    ("get", SESSIONS),
    ("post", SESSIONS),
    ("get", f"{SESSIONS}/0123456789ab"),
    ("get", f"{SESSIONS}/0123456789ab/metrics"),
    ("get", f"{SESSIONS}/0123456789ab/logs"),
    ("post", f"{SESSIONS}/0123456789ab/stop"),
    ("post", f"{SESSIONS}/0123456789ab/resume"),
    ("get", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", TOKEN])
def test_every_route_requires_the_token(make_client, method, path, header):
    headers = {"Authorization": header} if header else {}
    with make_client(token=TOKEN) as client:
        res = getattr(client, method)(path, headers=headers)
    assert res.status_code == 401
    assert res.headers["www-authenticate"] == "Bearer" and res.json()["field"] == "authorization"


def test_the_right_token_opens_every_route(make_client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with make_client(token=TOKEN) as client:
        assert client.get("/", headers=auth).status_code == 200
        assert client.get("/docs", headers=auth).status_code == 200
        res = client.post(SESSIONS, json={"config_path": "tiny.yaml"}, headers=auth)
        assert res.status_code == 201
        sid = res.json()["session_id"]
        for suffix in ("", "/metrics", "/logs"):
            assert client.get(f"{SESSIONS}/{sid}{suffix}", headers=auth).status_code == 200


def test_without_a_token_routes_are_open_on_loopback(make_client):
    with make_client() as client:
        assert client.get("/").status_code == 200
        create(client)


def _asgi_get(app, server: tuple[str, int]) -> int:
    """Status of one ``GET /api/v1/training/sessions`` delivered to ``app`` as if on the socket ``server``."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": SESSIONS, "raw_path": SESSIONS.encode(), "root_path": "", "query_string": b"", "headers": [],
        "server": server, "client": ("203.0.113.9", 50000),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_request_on_a_non_loopback_socket_without_token_is_refused(configs_root, tmp_path):
    app = create_app(ServerSettings(runs_dir=tmp_path / "runs", configs_root=configs_root))
    assert _asgi_get(app, ("192.168.1.20", 8000)) == 403
    assert _asgi_get(app, ("0.0.0.0", 8000)) == 403


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.2", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_token(configs_root, tmp_path):
    no_token = ServerSettings(runs_dir=tmp_path, configs_root=configs_root)
    with pytest.raises(ValueError, match="PIVOT_API_TOKEN"):
        check_bind("0.0.0.0", no_token)
    check_bind("127.0.0.1", no_token)
    check_bind("0.0.0.0", ServerSettings(runs_dir=tmp_path, configs_root=configs_root, token=TOKEN))


def test_serve_refuses_a_public_host_without_token_before_listening(configs_root, tmp_path, monkeypatch):
    monkeypatch.delenv("PIVOT_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="refusing to bind the training API to 0.0.0.0"):
        serve("0.0.0.0", 0, runs_dir=tmp_path, configs_root=configs_root)


def test_pivot_serve_on_a_public_host_without_token_exits_2(configs_root, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("PIVOT_API_TOKEN", raising=False)
    code = pivot(["serve", "--host", "0.0.0.0", "--runs-dir", str(tmp_path), "--configs-root", str(configs_root)])
    assert code == 2
    assert "refusing to bind" in caplog.text


def test_uvicorn_cli_on_a_public_host_without_token_fails_startup(configs_root, tmp_path, monkeypatch):
    monkeypatch.delenv("PIVOT_API_TOKEN", raising=False)
    monkeypatch.setattr("sys.argv", ["/venv/bin/uvicorn", "pivot_monai.api.app:app", "--host", "0.0.0.0"])
    from fastapi.testclient import TestClient

    app = create_app(ServerSettings(runs_dir=tmp_path, configs_root=configs_root))
    with pytest.raises(ValueError, match="refusing to bind"), TestClient(app):
        pass


def test_settings_from_env(monkeypatch, configs_root, tmp_path):
    monkeypatch.setenv("PIVOT_API_CONFIGS_ROOT", str(configs_root))
    monkeypatch.setenv("PIVOT_API_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("PIVOT_API_MAX_CONCURRENT", "3")
    monkeypatch.setenv("PIVOT_API_TOKEN", TOKEN)
    settings = ServerSettings.from_env(max_concurrent=2)
    assert settings.configs_root == configs_root and settings.db_path == tmp_path / "r" / "sessions.db"
    assert settings.max_concurrent == 2 and settings.token == TOKEN
    monkeypatch.setenv("PIVOT_API_MAX_CONCURRENT", "zero")
    with pytest.raises(ValueError, match="PIVOT_API_MAX_CONCURRENT"):
        ServerSettings.from_env()
