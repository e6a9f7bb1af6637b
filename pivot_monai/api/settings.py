"""Server settings: where state and session outputs live, which configs may run, how many run at once, the token.

One :class:`ServerSettings` travels from ``pivot serve`` (or the environment, for ``uvicorn
pivot_monai.api.app:app``) into the app. Every path is made absolute once, here.

Environment variables (all optional): ``PIVOT_API_DB`` (SQLite file), ``PIVOT_API_RUNS_DIR`` (session output
folders), ``PIVOT_API_CONFIGS_ROOT`` (the only folder whose configs may run), ``PIVOT_API_MAX_CONCURRENT``,
``PIVOT_API_TOKEN`` (bearer token; when set, every route requires it).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pivot_monai.config import BUNDLE_DIR

__all__ = ["DEFAULT_HOST", "ServerSettings", "is_loopback"]

DEFAULT_HOST = "127.0.0.1"
_DEFAULT_RUNS = Path("runs/api")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive_int(value: str | int, name: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if out < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return out


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one API server.

    Args:
        db_path: the SQLite state file. Default ``<runs_dir>/sessions.db``.
        runs_dir: parent of the per-session output folders (``<runs_dir>/sessions/<name>-<id>/``). Default
            ``runs/api``.
        configs_root: ``config_path`` must resolve (symlinks included) inside this folder. Default
            ``bundle/configs``.
        max_concurrent: sessions training at once; more wait in the queue. Default 1.
        token: bearer token required on every route when set (``PIVOT_API_TOKEN``). Default ``None``.
        base_config: the bundle config every session is layered over. Default ``bundle/configs/train.yaml``.
        workdir: the training subprocesses' working directory (``bundle_root: bundle`` is relative to it). Default
            the repository root.
        poll_interval: seconds between checks of the training processes and the queue. Default 0.5.
        stop_timeout: seconds a stopping session may take to write its checkpoint before it is killed. Default 600.
    """

    db_path: Path | None = None
    runs_dir: Path = _DEFAULT_RUNS
    configs_root: Path = BUNDLE_DIR / "configs"
    max_concurrent: int = 1
    token: str | None = None
    base_config: Path = BUNDLE_DIR / "configs" / "train.yaml"
    workdir: Path = BUNDLE_DIR.parent
    poll_interval: float = 0.5
    stop_timeout: float = 600.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        runs = Path(self.runs_dir).expanduser().resolve()
        object.__setattr__(self, "runs_dir", runs)
        object.__setattr__(self, "db_path", Path(self.db_path or runs / "sessions.db").expanduser().resolve())
        object.__setattr__(self, "configs_root", Path(self.configs_root).expanduser().resolve())
        object.__setattr__(self, "base_config", Path(self.base_config).expanduser().resolve())
        object.__setattr__(self, "workdir", Path(self.workdir).expanduser().resolve())
        object.__setattr__(self, "max_concurrent", _positive_int(self.max_concurrent, "max_concurrent"))
        object.__setattr__(self, "token", self.token or None)
        if not self.configs_root.is_dir():
            raise ValueError(f"configs root {self.configs_root} is not a folder (set PIVOT_API_CONFIGS_ROOT)")

    @property
    def sessions_dir(self) -> Path:
        return self.runs_dir / "sessions"

    @classmethod
    def from_env(cls, **overrides) -> ServerSettings:
        """Settings from the ``PIVOT_API_*`` environment variables; keyword arguments that are not ``None`` win."""
        env = os.environ
        values: dict = {}
        for name, var in (("db_path", "PIVOT_API_DB"), ("runs_dir", "PIVOT_API_RUNS_DIR")):
            if env.get(var):
                values[name] = Path(env[var])
        if env.get("PIVOT_API_CONFIGS_ROOT"):
            values["configs_root"] = Path(env["PIVOT_API_CONFIGS_ROOT"])
        if env.get("PIVOT_API_MAX_CONCURRENT"):
            values["max_concurrent"] = _positive_int(env["PIVOT_API_MAX_CONCURRENT"], "PIVOT_API_MAX_CONCURRENT")
        if env.get("PIVOT_API_TOKEN"):
            values["token"] = env["PIVOT_API_TOKEN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
