"""Request and response bodies of the training API (pydantic models, shown in the OpenAPI docs at ``/docs``).

Clients never send config text: a session names a config file under the server's configs root and may change only
the typed, range-checked hyperparameters of :class:`TrainingOverrides`. Unknown fields are rejected (422).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "OVERRIDE_KEYS",
    "SESSION_STATUSES",
    "LogsOut",
    "MetricsOut",
    "SessionCreate",
    "SessionList",
    "SessionOut",
    "TrainingOverrides",
]

SESSION_STATUSES = ("queued", "running", "stopping", "stopped", "completed", "failed", "interrupted")
Status = Literal["queued", "running", "stopping", "stopped", "completed", "failed", "interrupted"]

_STRICT = ConfigDict(extra="forbid", strict=True)

# override field -> the bundle config id it sets (MONAI `#` path of bundle/configs/train.yaml)
OVERRIDE_KEYS: dict[str, str] = {
    "epochs": "training#epochs",
    "learning_rate": "training#learning_rate",
    "batch_size": "training#batch_size",
    "patch_size": "data#patch_size",
    "samples_per_volume": "data#samples_per_volume",
    "weight_decay": "training#optimizer#weight_decay",
    "warmup_epochs": "training#scheduler#warmup_epochs",
    "accumulation_steps": "training#accumulation_steps",
    "seed": "training#seed",
    "validation_interval": "validation#interval",
    "save_interval": "checkpointing#save_interval",
    "log_interval": "logging#log_interval",
    "num_workers": "data#num_workers",
    "early_stopping": "training#early_stopping#enabled",
    "device": "device#type",
    "mixed_precision": "device#mixed_precision",
}


class TrainingOverrides(BaseModel):
    """The hyperparameters a client may change; each sets one key of the session's config (``OVERRIDE_KEYS``)."""

    model_config = _STRICT

    epochs: int | None = Field(None, ge=1, le=100_000, description="training.epochs")
    learning_rate: float | None = Field(None, gt=0, le=10, description="training.learning_rate")
    batch_size: int | None = Field(None, ge=1, le=1024, description="training.batch_size")
    patch_size: list[int] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="data.patch_size, 3 sides of 8-1024 voxels, each divisible by 2 ** model.depth",
    )
    samples_per_volume: int | None = Field(None, ge=1, le=256, description="data.samples_per_volume")
    weight_decay: float | None = Field(None, ge=0, le=1, description="training.optimizer.weight_decay")
    warmup_epochs: int | None = Field(None, ge=0, le=100_000, description="training.scheduler.warmup_epochs")
    accumulation_steps: int | None = Field(None, ge=1, le=1024, description="training.accumulation_steps")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="training.seed")
    validation_interval: int | None = Field(None, ge=1, le=100_000, description="validation.interval (epochs)")
    save_interval: int | None = Field(None, ge=0, le=100_000, description="checkpointing.save_interval (epochs)")
    log_interval: int | None = Field(None, ge=1, le=100_000, description="logging.log_interval (iterations)")
    num_workers: int | None = Field(None, ge=0, le=64, description="data.num_workers")
    early_stopping: bool | None = Field(None, description="training.early_stopping.enabled")
    device: Literal["cpu", "cuda"] | None = Field(None, description="device.type")
    mixed_precision: bool | None = Field(None, description="device.mixed_precision")

    def config_ids(self) -> dict[str, Any]:
        """``{bundle config id: value}`` of the fields that were set."""
        return {OVERRIDE_KEYS[k]: v for k, v in self.model_dump(exclude_none=True).items()}


class SessionCreate(BaseModel):
    """``POST /api/v1/training/sessions``: which config to train, under what name, with which overrides."""

    model_config = _STRICT

    config_path: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="a YAML under the configs root (relative to it), merged over train.yaml as `pivot train --config`",
        examples=["demo.yaml"],
    )
    session_name: str | None = Field(
        None, max_length=200, description="display name; sanitised into the output folder's name"
    )
    overrides: TrainingOverrides | None = None


class SessionOut(BaseModel):
    """One training session as the API reports it."""

    session_id: str
    session_name: str
    status: Status
    config: dict[str, Any] = Field(description="config_path, overrides and the generated session config file")
    output_dir: str
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    current_epoch: int | None = None
    max_epochs: int | None = None
    checkpoints: list[str] = Field(default_factory=list, description="every .pt file the run wrote, oldest first")
    resume_checkpoint: str | None = Field(None, description="the checkpoint a resume continues from")
    attempts: int = Field(0, description="how many times the training process was started")
    pid: int | None = None
    exit_code: int | None = None
    error: str | None = None


class SessionList(BaseModel):
    sessions: list[SessionOut]


class MetricsOut(BaseModel):
    """Per-epoch records (``kind`` train / val / end), oldest first; poll again with ``since=next``."""

    session_id: str
    status: Status
    since: int
    next: int
    records: list[dict[str, Any]]


class LogsOut(BaseModel):
    session_id: str
    lines: list[str]
