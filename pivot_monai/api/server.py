"""``pivot serve``: run the training API under uvicorn, on 127.0.0.1 unless a token allows more."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.utils import optional_import

from pivot_monai.api.settings import DEFAULT_HOST, ServerSettings

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def serve(
    host: str = DEFAULT_HOST,
    port: int = 8000,
    db_path: str | Path | None = None,
    configs_root: str | Path | None = None,
    max_concurrent: int | None = None,
    runs_dir: str | Path | None = None,
    token: str | None = None,
) -> None:
    """Serve the training API until interrupted (Ctrl-C); running sessions keep training.

    Args:
        host: address to bind. Default ``127.0.0.1``; any non-loopback address needs a token.
        port: TCP port. Default 8000.
        db_path: SQLite state file. Default ``$PIVOT_API_DB`` or ``<runs_dir>/sessions.db``.
        configs_root: the folder whose configs may run. Default ``$PIVOT_API_CONFIGS_ROOT`` or ``bundle/configs``.
        max_concurrent: sessions training at once. Default ``$PIVOT_API_MAX_CONCURRENT`` or 1.
        runs_dir: parent of the session folders. Default ``$PIVOT_API_RUNS_DIR`` or ``runs/api``.
        token: bearer token. Default ``$PIVOT_API_TOKEN``; when set, every route requires it.

    Raises:
        ValueError: a non-loopback ``host`` without a token, or an invalid setting.
    """
    from pivot_monai.api.app import check_bind, create_app

    uvicorn, _ = optional_import("uvicorn", descriptor='`pivot serve` needs the api extra: pip install -e ".[api]"')
    settings = ServerSettings.from_env(
        db_path=db_path, configs_root=configs_root, max_concurrent=max_concurrent, runs_dir=runs_dir, token=token
    )
    check_bind(host, settings)
    logger.info("training API on http://%s:%d (dashboard /, docs /docs)", host, port)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
