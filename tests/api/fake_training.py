"""Stand-in for the bundle training command in the API's fast tests: ``python fake_training.py <session.yaml>``.

It reads the generated session config as the real run would (``training#epochs``, ``checkpointing#dir``,
``checkpointing#resume``, the metrics hook's path and attempt), then per epoch sleeps ``FAKE_EPOCH_SECONDS``, appends
train and val records to ``metrics.jsonl`` and writes ``checkpoint_epoch=E.pt``. SIGTERM is a graceful stop: it writes
``checkpoint_epoch=E_iteration=I.pt`` and exits 143, as :mod:`pivot_monai.handlers.graceful_stop` does.
``FAKE_EXIT_CODE`` sets the exit status of a run that finishes its epochs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import yaml

_CKPT = re.compile(r"^checkpoint_epoch=(\d+)(?:_iteration=(\d+))?\.pt$")


def _write(path: Path, **record) -> None:
    with path.open("a") as f:
        f.write(json.dumps({**record, "time": time.time()}) + "\n")


def main(session_file: str) -> int:
    cfg = yaml.safe_load(Path(session_file).read_text())
    models = Path(cfg["checkpointing#dir"])
    models.mkdir(parents=True, exist_ok=True)
    hook = re.search(r"'([^']+metrics\.jsonl)', @loss, (\d+)\)$", cfg["initialize"][-1])
    metrics, attempt = Path(hook[1]), int(hook[2])
    epochs = int(cfg.get("training#epochs", 3))
    delay = float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    start = 0
    if cfg.get("checkpointing#resume") == "true":
        found = sorted(models.glob("checkpoint_epoch=*.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            print("no checkpoint to resume from", flush=True)
            return 1
        start = int(_CKPT.match(found[-1].name)[1])
        print(f"resuming from {found[-1]}", flush=True)
    stop: dict = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.setdefault("signum", signum))
    print(f"fake training attempt {attempt}: epochs {start + 1}..{epochs}", flush=True)
    for epoch in range(start + 1, epochs + 1):
        time.sleep(delay)
        if "signum" in stop:
            (models / f"checkpoint_epoch={epoch}_iteration={epoch * 2 - 1}.pt").write_bytes(b"fake")
            print(f"stopped by SIGTERM at epoch {epoch}", flush=True)
            return 128 + stop["signum"]
        _write(metrics, kind="val", epoch=epoch, metrics={"val_froc": epoch / epochs}, attempt=attempt)
        _write(metrics, kind="train", epoch=epoch, iteration=2 * epoch, loss=1.0 / epoch, lr=1e-3, attempt=attempt)
        (models / f"checkpoint_epoch={epoch}.pt").write_bytes(b"fake")
    _write(metrics, kind="end", epoch=epochs, max_epochs=epochs, attempt=attempt)
    return int(os.environ.get("FAKE_EXIT_CODE", "0"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
