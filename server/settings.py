"""Server settings: flags and `TRUNKLINE_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every field is also the environment variable TRUNKLINE_<FIELD> (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="TRUNKLINE_", extra="ignore")

    model: str = Field("mnist-scenes", description="checkpoint directory or bundled model name")
    host: str = "127.0.0.1"
    port: int = 8000
    backend: Literal["torch", "onnxruntime"] = "torch"
    threads: int = Field(2, ge=1, description="intra-op threads of the model compute")
    default_budget: str = Field("max", description="budget of requests that name none")
    max_batch_size: int = Field(64, ge=1)
    batch_wait_ms: float = Field(
        0.0, ge=0, description="how long a batch waits to fill; 0: batches form while the previous one runs"
    )
    degrade_headroom: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a request with timeout_ms and min_budget steps down to a cheaper route while its "
        "estimated finish exceeds this fraction of timeout_ms",
    )
    max_queue: int = Field(1024, ge=1, description="queued instances before 429")
    max_instances: int = Field(256, ge=1, description="instances per request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    batch_buckets: list[int] = Field([1, 8, 32, 64], description="calibrated batch sizes")
    calibration_rounds: int = Field(3, ge=1)
    auth_token: str | None = Field(None, description="require 'Authorization: Bearer <token>'")
    onnx_dir: Path = Field(
        Path.home() / ".cache" / "trunkline" / "onnx",
        description="where exported ONNX graphs are cached",
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="graceful shutdown drain limit")
    log_level: str = "info"
