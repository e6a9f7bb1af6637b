"""api stage of PIVOT: the training-session server (FastAPI + SQLite) and its dashboard page.

``pivot serve`` or ``uvicorn pivot_monai.api.app:app`` starts it; :func:`serve` is the function behind the command.
The FastAPI modules load only when used, so ``import pivot_monai.api`` works without the ``api`` extra.
"""

from __future__ import annotations

from pivot_monai.api.server import serve
from pivot_monai.api.settings import ServerSettings

__all__ = ["ServerSettings", "serve"]
