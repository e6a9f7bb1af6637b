"""The training API: create, list, monitor, stop and resume training sessions over HTTP, plus a dashboard page.

Start it with ``pivot serve`` (see :func:`pivot_monai.api.server.serve`) or ``uvicorn pivot_monai.api.app:app``
(settings from the ``PIVOT_API_*`` environment, :class:`~pivot_monai.api.settings.ServerSettings`). Routes, all
under ``/api/v1/training``::

    POST /sessions                      201 {"session_id": ...}   body: config_path, session_name, overrides
    GET  /sessions                      {"sessions": [...]}
    GET  /sessions/{id}                 status, config, timestamps, current epoch, checkpoints
    GET  /sessions/{id}/metrics?since=N per-epoch records from the N-th on; poll again with since=next
    GET  /sessions/{id}/logs?lines=N    the tail of the run's log
    POST /sessions/{id}/stop            202; SIGTERM -> checkpoint -> stopped
    POST /sessions/{id}/resume          202; queued again, continuing from the newest resumable checkpoint

``GET /`` is the dashboard, ``/docs`` the OpenAPI page. With a token (``PIVOT_API_TOKEN``) every route, these two
included, requires ``Authorization: Bearer <token>``. Without one, requests arriving on a non-loopback address are
refused. Errors are JSON ``{"detail": ..., "field": ...}``: 400 malformed JSON or a config_path outside the configs
root, 401 a missing or wrong token, 404 an unknown id, 409 a request the session's status does not allow, 422 an
invalid field.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from monai.utils import optional_import

from pivot_monai.api.configs import ConfigPathError, SessionConfigError
from pivot_monai.api.schemas import LogsOut, MetricsOut, SessionCreate, SessionList, SessionOut
from pivot_monai.api.sessions import CommandBuilder, SessionConflict, SessionManager, SessionNotFound
from pivot_monai.api.settings import ServerSettings, is_loopback
from pivot_monai.api.store import SessionStore
from pivot_monai.config import ConfigKeyError

_HINT = 'the training API needs its extra: pip install -e ".[api]"'
fastapi, _ = optional_import("fastapi", descriptor=_HINT)
responses, _ = optional_import("fastapi.responses", descriptor=_HINT)
exceptions, _ = optional_import("fastapi.exceptions", descriptor=_HINT)
jsonable_encoder, _ = optional_import("fastapi.encoders", name="jsonable_encoder", descriptor=_HINT)

__all__ = ["app", "check_bind", "create_app"]

logger = logging.getLogger(__name__)

DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"
PREFIX = "/api/v1/training"


def check_bind(host: str, settings: ServerSettings) -> None:
    """Refuse a non-loopback ``host`` unless a token is set.

    Raises:
        ValueError: ``host`` reaches beyond this machine and ``settings.token`` is not set.
    """
    if not is_loopback(host) and not settings.token:
        raise ValueError(
            f"refusing to bind the training API to {host}: without a token anyone who can reach it can run code "
            "through a config. Bind to 127.0.0.1 (the default), or set PIVOT_API_TOKEN to a secret and send it as "
            "'Authorization: Bearer <token>'"
        )


def _uvicorn_cli_host() -> str | None:
    """The ``--host`` of a ``uvicorn pivot_monai.api.app:app`` command line (``None`` when not run that way)."""
    if "uvicorn" not in Path(sys.argv[0]).parts[-2:] and Path(sys.argv[0]).name != "uvicorn":
        return None
    host = os.environ.get("UVICORN_HOST")
    for i, arg in enumerate(sys.argv):
        if arg == "--host" and i + 1 < len(sys.argv):
            host = sys.argv[i + 1]
        elif arg.startswith("--host="):
            host = arg.split("=", 1)[1]
    return host


def _remote_socket(server: tuple | None) -> bool:
    """Whether a request arrived on a non-loopback IP address (``scope["server"]``: the socket's own address)."""
    if not server or not server[0]:
        return False
    try:
        return not ipaddress.ip_address(str(server[0]).strip("[]")).is_loopback
    except ValueError:  # not a socket address (a Unix socket, an in-process test client)
        return False


def _error(status: int, detail: Any, field: str | None = None, headers: dict | None = None):
    body = {"detail": detail} if field is None else {"detail": detail, "field": field}
    return responses.JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: ServerSettings | None = None, command: CommandBuilder | None = None) -> Any:
    """The FastAPI application.

    Args:
        settings: the server settings; ``None`` reads them from the environment when the server starts.
        command: the launch command builder (tests substitute a stand-in for the bundle training command).

    Returns:
        a ``fastapi.FastAPI``; its state holds ``settings`` and (while serving) ``manager``.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        current = app.state.settings = app.state.settings or ServerSettings.from_env()
        host = _uvicorn_cli_host()
        if host is not None:
            check_bind(host, current)
        store = SessionStore(current.db_path)
        manager = SessionManager(current, store, command)
        manager.start()
        app.state.manager = manager
        logger.info("training API: state %s, configs %s, %d at once", current.db_path, current.configs_root,
                    current.max_concurrent)  # fmt: skip
        try:
            yield
        finally:
            manager.shutdown()
            store.close()

    app = fastapi.FastAPI(
        title="PIVOT training API",
        version="1",
        description="Create, monitor, stop and resume PIVOT training sessions (the bundle's training command).",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.middleware("http")
    async def authenticate(request: Any, call_next: Any) -> Any:
        token = app.state.settings.token if app.state.settings else os.environ.get("PIVOT_API_TOKEN")
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer <PIVOT_API_TOKEN>')",
                              "authorization", {"WWW-Authenticate": "Bearer"})  # fmt: skip
        elif _remote_socket(request.scope.get("server")):
            return _error(403, "this server has no token and answers loopback addresses only; set PIVOT_API_TOKEN")
        return await call_next(request)

    @app.exception_handler(exceptions.RequestValidationError)
    async def validation_error(request: Any, err: Any) -> Any:
        errors = jsonable_encoder(err.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, errors, "body")
        field = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else None
        return _error(422, errors, field or None)

    @app.exception_handler(SessionNotFound)
    async def not_found(request: Any, err: Exception) -> Any:
        return _error(404, str(err), "session_id")

    @app.exception_handler(SessionConflict)
    async def conflict(request: Any, err: Exception) -> Any:
        return _error(409, str(err), "status")

    @app.exception_handler(ConfigPathError)
    async def bad_config_path(request: Any, err: Exception) -> Any:
        return _error(400, str(err), "config_path")

    @app.exception_handler(ConfigKeyError)
    async def bad_config_key(request: Any, err: Exception) -> Any:
        return _error(422, str(err), "config_path")

    @app.exception_handler(SessionConfigError)
    async def bad_session_config(request: Any, err: SessionConfigError) -> Any:
        return _error(422, str(err), err.field)

    def manager() -> SessionManager:
        return app.state.manager

    @app.post(f"{PREFIX}/sessions", status_code=201, response_model=SessionOut)
    def create_session(body: SessionCreate) -> dict:
        """Queue a training session; it starts when a slot is free."""
        m = manager()
        return m.describe(m.create(body))

    @app.get(f"{PREFIX}/sessions", response_model=SessionList)
    def list_sessions() -> dict:
        m = manager()
        return {"sessions": [m.describe(r) for r in m.list()]}

    @app.get(f"{PREFIX}/sessions/{{session_id}}", response_model=SessionOut)
    def get_session(session_id: str) -> dict:
        m = manager()
        return m.describe(m.get(session_id))

    @app.get(f"{PREFIX}/sessions/{{session_id}}/metrics", response_model=MetricsOut)
    def get_metrics(session_id: str, since: int = fastapi.Query(0, ge=0, le=10**9)) -> dict:
        """Per-epoch records (``kind``: train, val, end) from the ``since``-th on."""
        row, records, nxt = manager().metrics(session_id, since)
        return {"session_id": row["id"], "status": row["status"], "since": since, "next": nxt, "records": records}

    @app.get(f"{PREFIX}/sessions/{{session_id}}/logs", response_model=LogsOut)
    def get_logs(session_id: str, lines: int = fastapi.Query(200, ge=1, le=10_000)) -> dict:
        return {"session_id": session_id, "lines": manager().logs(session_id, lines)}

    @app.post(f"{PREFIX}/sessions/{{session_id}}/stop", status_code=202, response_model=SessionOut)
    def stop_session(session_id: str) -> dict:
        """Stop gracefully: the run writes a checkpoint and exits; the status becomes stopped."""
        m = manager()
        return m.describe(m.stop(session_id))

    @app.post(f"{PREFIX}/sessions/{{session_id}}/resume", status_code=202, response_model=SessionOut)
    def resume_session(session_id: str) -> dict:
        """Queue a stopped, failed or interrupted session again, from its newest resumable checkpoint."""
        m = manager()
        return m.describe(m.resume(session_id))

    @app.get("/", include_in_schema=False)
    def dashboard() -> Any:
        return responses.HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))

    return app


app = create_app()
